"""Fixtures of the memory tests: a server with no warm pool (memories need no Docker), on
SQLite or on a real PostgreSQL with pgvector (the `pgserver` package's, run as a local
process)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.app import App
from runtime.settings import Settings, load_settings


def memory_settings(**overrides: Any) -> Settings:
    return load_settings(pool_size=0, reap_interval_s=0.2, **overrides)


@pytest.fixture
async def memory_app(settings: Settings) -> AsyncIterator[App]:
    application = App(memory_settings())
    async with application.running():
        yield application
    application.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One PostgreSQL 16 server with pgvector for the session; a database per test."""
    import pgserver

    folder = Path(tmp_path_factory.mktemp("pg"))
    server = pgserver.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    name = f"memory_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name};")
    return str(postgres_server.get_uri(name)).replace("postgresql://", "postgresql+psycopg://", 1)
