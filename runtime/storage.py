"""Opening the store: run the Alembic migrations to head, then hand out the Store."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from scheduler.store import Store


def alembic_config(store: Store) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("runtime").joinpath("migrations")))
    config.set_main_option("sqlalchemy.url", store.url.replace("%", "%%"))
    return config


def open_store(url: str) -> Store:
    store = Store(url)
    with store.engine.begin() as connection:
        config = alembic_config(store)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return store
