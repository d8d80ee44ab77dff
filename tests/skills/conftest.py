"""Fixtures of the memory tests: a server with no warm pool (memories need no Docker), on
SQLite (the PostgreSQL store's fixtures are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
