"""Routing between places (scheduler/routing.py) under stress, in process: servers on one
SQLite store, each with a data dir of its own. A call made before the first heartbeat is
still routed; a routed task whose admitting server stopped is still run (its hold is not
kept for ever); a task the place's server claims while its caller's server fails it (a
lapsed heartbeat seen a moment) is not settled twice; a dead server's idempotent task is
retried where its resource lives."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from common.errors import CloudSkillsError
from runtime.app import App
from scheduler.models import Task, Worker, utcnow
from tests.runtime.conftest import make_db, no_task_hold_left, server

pytestmark = pytest.mark.anyio


def row(app: App, task_id: str) -> Task:
    with app.store.transaction() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


async def finished(app: App, task_id: str) -> Task:
    with anyio.fail_after(15):
        while (task := row(app, task_id)).finished_at is None:  # noqa: ASYNC110 - another server settles it
            await anyio.sleep(0.05)
    return task


async def test_a_call_before_the_first_heartbeat_is_routed(tmp_path: Path, pair: tuple[App, App]) -> None:
    """The CLI starts a process, calls at once and leaves: its one call comes before any
    heartbeat, and must still run where the database lives."""
    first, _ = pair
    db = await make_db(first)
    third = server(tmp_path, "c")
    try:
        async with third.running(serving=False):
            outcome = await third.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    finally:
        third.close()
    assert outcome.unwrap()["rows"] == [[7]]
    task = row(first, outcome.task_id)
    assert (task.place, task.worker_id) == (first.workers.place, first.workers.id)


async def test_a_routed_task_whose_caller_stopped_still_runs_and_releases_its_hold(tmp_path: Path) -> None:
    first, second = server(tmp_path, "a"), server(tmp_path, "b")
    try:
        async with first.running(serving=False):
            db = await make_db(first)
            async with second.running(serving=False):
                second.router.refresh()  # it sees both places; the first's last heartbeat was before it started
                first.router.places = {first.router.place}
                call = second.prepare("db_query", {"db_id": db, "sql": "SELECT n FROM t"})
                task_id = second.scheduler.submit("local", call.binding, call.args)
                # The second stops before the first's next heartbeat.
            first.router.refresh()  # its next heartbeat: one place is alive, the first's own
            assert first.router.places == {first.workers.place}
            first._settle_dead_workers()
            task = await finished(first, task_id)
            assert task.state == "succeeded"
            no_task_hold_left(first)
    finally:
        first.close()
        second.close()


async def test_a_task_claimed_while_its_callers_server_fails_it_is_not_settled_twice(
    pair: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's server reads the task queued and sees its place with no live server (a
    heartbeat late a moment); between that read and the settlement, the place's server claims
    it. It must not be failed as "never ran, nothing charged" while it runs there."""
    first, second = pair
    db = await make_db(first)
    call = second.prepare("db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    task_id = second.scheduler.submit("local", call.binding, call.args)
    settle_unrun = second.scheduler.settle_unrun

    def claimed_meanwhile(task: str, state: str, error: CloudSkillsError) -> None:
        first.router._claim_here()
        settle_unrun(task, state, error)

    with monkeypatch.context() as patched:
        patched.setattr(second.scheduler, "settle_unrun", claimed_meanwhile)
        patched.setattr(second.workers, "live_places", lambda: {second.workers.place})
        second.router.refresh()
    assert row(first, task_id).finished_at is None, "settled by its caller's server while it runs elsewhere"
    second.router.refresh()
    outcome = await second.scheduler.wait(task_id)
    assert outcome.state == "succeeded" and outcome.unwrap()["rows"] == [[7]]
    task = row(first, task_id)
    assert task.payload is None
    no_task_hold_left(first)


async def test_a_dead_servers_idempotent_task_is_retried_where_its_resource_lives(pair: tuple[App, App]) -> None:
    """A server at the first's place died running db_describe (idempotent, arguments kept).
    Whoever judges the dead must not retry it at its own place, where the database is not."""
    first, second = pair
    db = await make_db(first)
    long_ago = utcnow() - timedelta(hours=1)
    task: dict[str, Any] = {
        "id": "t_orphan",
        "tenant_id": "local",
        "skill": "db",
        "op": "describe",
        "args": {"db_id": db},
        "args_whole": True,
        "state": "running",
        "idempotent": True,
        "timeout_s": 30.0,
        "attempts": 1,
        "max_attempts": 2,
        "created_at": long_ago,
        "started_at": long_ago,
        "hold_micros": 0,
        "cost_micros": 0,
        "worker_id": "w_dead",
    }
    with first.store.transaction() as session:
        session.add(Worker(id="w_dead", host="elsewhere", pid=1, heartbeat_at=long_ago, place=first.workers.place))
        session.add(Task(**task))
    second._settle_dead_workers()  # the second judges the dead (the duties' leader, say)
    done = await finished(first, "t_orphan")
    assert done.worker_id == first.workers.id, "retried at a place where its database does not live"
    with anyio.fail_after(15):
        while row(first, "t_orphan").payload is not None:  # noqa: ASYNC110 - the second's poll empties it
            await anyio.sleep(0.05)


async def test_a_cancel_where_a_routed_task_runs_answers_once_it_stopped(pair: tuple[App, App]) -> None:
    """A cancel reaching the server that runs a routed task (tasks/cancel there) answers
    with the task's state once it has stopped, as for a task of its own."""
    first, second = pair
    db = await make_db(first)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    call = second.prepare("db_query", {"db_id": db, "sql": forever, "timeout_s": 3})
    submitted = second.scheduler.submit("local", call.binding, call.args)
    with anyio.fail_after(30):
        while submitted not in first.scheduler.routed_running():  # noqa: ASYNC110 - the first's poll claims it
            await anyio.sleep(0.02)
    assert await first.scheduler.cancel("local", submitted) in {"cancelled", "timed_out"}
    outcome = await second.scheduler.wait(submitted)
    assert outcome.state in {"cancelled", "timed_out"}
    assert row(first, submitted).payload is None
    no_task_hold_left(first)


async def test_a_caller_whose_task_stopped_midway_at_another_place_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server running a routed task stops (its task with it) and its place has no server
    left. The caller waits in a process that judges no dead servers (the CLI's, serving=False):
    its next heartbeat must answer, not leave it waiting for ever."""
    first, second = server(tmp_path, "a"), server(tmp_path, "b")
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    try:
        async with second.running(serving=False):
            async with first.running(serving=False):
                db = await make_db(first)
                for app in (first, second):
                    app.router.refresh()
                call = second.prepare("db_query", {"db_id": db, "sql": forever, "timeout_s": 3})
                task_id = second.scheduler.submit("local", call.binding, call.args)
                with anyio.fail_after(30):
                    while task_id not in first.scheduler.routed_running():  # noqa: ASYNC110 - claimed on its poll
                        await anyio.sleep(0.02)
                # As kill -9: the first writes nothing more (its settlement never comes).
                monkeypatch.setattr(first.scheduler, "_finish", lambda *args, **kwargs: None)
            assert row(second, task_id).state == "running"  # the first stopped midway
            second.router.refresh()
            with anyio.fail_after(10):
                outcome = await second.scheduler.wait(task_id)
            assert outcome.state == "failed"
            no_task_hold_left(second)
    finally:
        first.close()
        second.close()


async def test_one_server_reads_no_place_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one place alive, a call on a database reads neither leases' nor workers' places."""
    app = server(tmp_path, "a")

    def unread(*args: Any) -> Any:
        raise AssertionError("a place read for a call with one place alive")

    try:
        async with app.running(serving=False):
            db = await make_db(app)  # the first call refreshed the places, once
            monkeypatch.setattr(app.leases, "places_of", unread)
            monkeypatch.setattr(app.workers, "live_places", unread)
            outcome = await app.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
            assert outcome.unwrap()["rows"] == [[7]]
    finally:
        app.close()
