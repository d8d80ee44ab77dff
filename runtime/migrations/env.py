"""Alembic's entry: migrate the connection the caller hands over (see runtime/storage.py)."""

from __future__ import annotations

from alembic import context

from runtime.storage import sqlite_extensions
from scheduler.models import Base
from scheduler.store import make_engine
from skills.registry import discover

# Every skill's rows join Base's metadata as its package is imported.
discover()

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # the `alembic` command line: connect by URL
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "", sqlite_extensions())
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
