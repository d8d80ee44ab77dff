"""Opening the store: run the Alembic migrations to head, then hand out the Store."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config

from scheduler.store import Store
from skills.registry import discover


def version_locations() -> list[str]:
    """The core's migrations, and each skill's own (``skills/<kind>/migrations``), so a new
    kind brings its tables in its own folder, on a branch of its own."""
    found = [str(resources.files("runtime").joinpath("migrations", "versions"))]
    for folder in sorted(Path(str(resources.files("skills"))).glob("*/migrations")):
        found.append(str(folder))
    return found


def alembic_config(store: Store) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("runtime").joinpath("migrations")))
    config.set_main_option("version_locations", " ".join(version_locations()))
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", store.url.replace("%", "%%"))
    return config


def sqlite_extensions() -> list[str]:
    """The SQLite extensions the skills' tables need (sqlite-vec for memories' vectors)."""
    return [path for skill in discover().skills for path in skill.store_extensions]


def open_store(url: str) -> Store:
    store = Store(url, sqlite_extensions())
    config = alembic_config(store)
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")
    if config.attributes.get("compact") and store.url.startswith("sqlite"):
        # A migration shrank what the store keeps: give the space back to the disk.
        # On the driver's own connection, which runs outside any transaction (VACUUM must).
        raw = store.engine.raw_connection()
        try:
            raw.cursor().execute("VACUUM")
        finally:
            raw.close()
    return store
