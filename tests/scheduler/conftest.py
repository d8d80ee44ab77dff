from __future__ import annotations

from pathlib import Path

import pytest

from runtime.storage import open_store
from runtime.tenants import ensure_tenant
from scheduler.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A fresh SQLite store, migrated, with the tenant `acme`."""
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_tenant(store, "acme")
    return store
