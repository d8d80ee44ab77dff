"""Two servers on one SQLite store, each with a data dir of its own: two places, for the
routing tests (scheduler/routing.py), in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.settings import load_settings
from sandbox.docker import DockerDriver
from scheduler.models import Lease, Tenant


def server(tmp_path: Path, name: str) -> App:
    home = tmp_path / name
    home.mkdir()
    settings = load_settings(home=home, database_url=f"sqlite:///{tmp_path / 'store.db'}", pool_size=0)
    return App(settings, DockerDriver("unix:///nonexistent/docker.sock"))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[App, App]]:
    first, second = server(tmp_path, "a"), server(tmp_path, "b")
    try:
        async with AsyncExitStack() as running:
            await running.enter_async_context(first.running(serving=False))
            await running.enter_async_context(second.running(serving=False))
            for app in (first, second):
                app.router.refresh()  # as their next heartbeat would: both places are live
            yield first, second
    finally:
        first.close()
        second.close()


async def make_db(app: App) -> str:
    db_id: str = (await app.call("local", "db_create", {"engine": "sqlite"})).unwrap()["db_id"]
    await app.call("local", "db_query", {"db_id": db_id, "sql": "CREATE TABLE t (n INTEGER)"})
    await app.call("local", "db_query", {"db_id": db_id, "sql": "INSERT INTO t VALUES (7)"})
    return db_id


def no_task_hold_left(app: App) -> None:
    with app.store.transaction() as session:
        tenant = session.get(Tenant, "local")
        leases = sum(lease.held_micros for lease in session.scalars(select(Lease).where(Lease.ended_at.is_(None))))
        assert tenant is not None and tenant.held_micros == leases, "no task's hold is left"
