"""Replicas on one store never remove the same database at once. The reaper (run by
the replica that leads the duties) leaves a delete under way to the live server doing
it, takes it over once that server has died, and retries one whose try failed. Two
removals of one PostgreSQL container at once make Docker refuse one of them, and the
caller's db_delete failed although the database went."""

from __future__ import annotations

import threading
from datetime import timedelta

import anyio
import pytest

from common.errors import BackendUnavailable
from runtime.app import App
from scheduler.models import Leader, utcnow
from scheduler.workers import Workers
from skills.db.engines.base import Instance
from skills.db.engines.postgres import PostgresEngine
from skills.db.instances import DatabaseManager
from skills.db.rows import Database
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def lead_replica(app: App) -> DatabaseManager:
    """Another replica's database manager, which leads the duties from now on: the app's
    own duty loop stands by, and only this test's reaps run."""
    lead = Workers(app.store, "w-lead-replica")
    lead.register()
    with app.store.transaction() as session:
        session.merge(Leader(duty="duties", worker_id=lead.id, until=utcnow() + timedelta(hours=1)))
    mine = app.service(DatabaseManager)
    manager = DatabaseManager(app.store, app.leases, mine.engines, mine.snapshots_dir)
    manager.workers = lead
    return manager


def postgres(app: App) -> PostgresEngine:
    engine = app.service(DatabaseManager).engines["postgres"]
    assert isinstance(engine, PostgresEngine)
    return engine


def state(app: App, db_id: str) -> tuple[str, str | None]:
    with app.store.transaction() as session:
        row = session.get(Database, db_id)
        assert row is not None
        return row.state, row.deleting_by


def container_of(app: App, db_id: str) -> bool:
    return db_id in postgres(app).leftovers()[0].values()


async def test_the_reaper_leaves_a_delete_under_way_to_the_live_server_doing_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead = lead_replica(app)
    engine = postgres(app)
    remove, removals, removing, go_on = engine.remove, [], threading.Event(), threading.Event()

    def held_first(instance: Instance) -> None:
        removals.append(instance.id)
        if len(removals) == 1:  # the deleting server's removal waits while the lead reaps
            removing.set()
            go_on.wait(30)
        remove(instance)

    monkeypatch.setattr(engine, "remove", held_first)
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres"))["db_id"]
        deleted: list[dict[str, object]] = []

        async def delete() -> None:
            deleted.append(await call(client, "db_delete", db_id=db))

        async with anyio.create_task_group() as group:
            group.start_soon(delete)
            await anyio.to_thread.run_sync(removing.wait, 30)
            assert await lead.reap() == []
            assert await lead.delete(db), "a delete through another replica: under way, so done"
            assert removals == [db] and state(app, db) == ("deleting", app.workers.id)
            go_on.set()
    assert [(out["db_id"], out["deleted"]) for out in deleted] == [(db, True)]
    assert removals == [db] and state(app, db) == ("deleted", app.workers.id) and not container_of(app, db)


async def test_the_reaper_finishes_the_delete_of_a_server_that_died(app: App) -> None:
    lead = lead_replica(app)
    gone = Workers(app.store, "w-gone-replica")
    gone.register()
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres"))["db_id"]
    with app.store.transaction() as session:  # it had marked the database deleting when it died
        row = session.get(Database, db)
        assert row is not None
        row.state, row.deleting_by = "deleting", gone.id
    assert await lead.reap() == []  # alive: its delete is its own
    gone.leave()
    assert await lead.reap() == [db]
    assert state(app, db) == ("deleted", "w-lead-replica") and not container_of(app, db)


async def test_a_failed_delete_is_retried_by_whichever_replica_reaps_next(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead = lead_replica(app)
    engine = postgres(app)
    remove = engine.remove

    def refused(instance: Instance) -> None:
        raise BackendUnavailable(f"Docker could not remove database {instance.id!r} (refused); the reaper retries it.")

    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres"))["db_id"]
        monkeypatch.setattr(engine, "remove", refused)
        assert "the reaper retries it" in await call_error(client, "db_delete", db_id=db)
    # Its server lives on but has let the delete go, so the lead's reaper takes it.
    assert state(app, db) == ("deleting", None) and container_of(app, db)
    monkeypatch.setattr(engine, "remove", remove)
    assert await lead.reap() == [db]
    assert state(app, db) == ("deleted", "w-lead-replica") and not container_of(app, db)
