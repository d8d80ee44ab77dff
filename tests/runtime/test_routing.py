"""Routing between places (scheduler/routing.py), in process: two servers on one SQLite store,
each with a data dir of its own (two places). A call through the second on a database the
first made runs on the first; a place whose server left fails its calls at once; one call
naming resources of two places is refused; a call cancelled by its caller's server stops
where it runs; a resource never runs where its data is not; and with one place alive and
every resource made there, nothing is routed."""

from __future__ import annotations

import anyio
import pytest

from common.errors import BackendUnavailable, InvalidInput
from runtime.app import App
from scheduler.models import Lease, Task
from tests.runtime.conftest import make_db, no_task_hold_left

pytestmark = pytest.mark.anyio


async def test_a_call_runs_where_its_resource_lives(pair: tuple[App, App]) -> None:
    first, second = pair
    db = await make_db(first)
    outcome = await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    assert outcome.unwrap()["rows"] == [[7]]
    with first.store.transaction() as session:
        task = session.get(Task, outcome.task_id)
        assert task is not None
        assert (task.place, task.worker_id) == (first.workers.place, first.workers.id)
        assert task.payload is None, "the whole result left the store once its caller had it"
    no_task_hold_left(first)
    # The first's own calls run at home, as ever.
    mine = await first.call("local", "db_query", {"db_id": db, "sql": "SELECT count(*) FROM t"})
    with first.store.transaction() as session:
        assert session.get(Task, mine.task_id).place is None  # type: ignore[union-attr]


async def test_a_place_with_no_server_fails_at_once(pair: tuple[App, App]) -> None:
    first, second = pair
    db = await make_db(first)
    first.workers.leave()  # as a server that stopped
    with pytest.raises(BackendUnavailable, match="no server is running"):
        await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})


async def test_one_call_cannot_span_two_places(pair: tuple[App, App]) -> None:
    first, second = pair
    db = await make_db(first)
    with second.store.transaction() as session:  # a workspace's lease, as the second would open it
        session.add(
            Lease(id="ws_elsewhere", tenant_id="local", kind="workspace", op="keep", place=second.workers.place)
        )
    with pytest.raises(InvalidInput, match="live on different machines"):
        await second.call(
            "local",
            "db_export",
            {"db_id": db, "workspace_id": "ws_elsewhere", "path": "t.csv", "sql": "SELECT n FROM t"},
        )


async def test_a_cancel_by_the_callers_server_stops_it_where_it_runs(pair: tuple[App, App]) -> None:
    first, second = pair
    db = await make_db(first)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    # timeout_s short: a statement in a SQLite worker is stopped at its timeout, not at a cancel.
    call = second.prepare("db_query", {"db_id": db, "sql": forever, "timeout_s": 3})
    submitted = second.scheduler.submit("local", call.binding, call.args)

    def running_there() -> bool:
        return submitted in first.scheduler.routed_running()

    with anyio.fail_after(30):
        while not running_there():  # noqa: ASYNC110 - the other server's poll claims it
            await anyio.sleep(0.02)
    assert await second.scheduler.cancel("local", submitted) == "cancelled"
    with anyio.fail_after(30):
        while running_there():  # noqa: ASYNC110 - stopped on its next poll
            await anyio.sleep(0.02)


async def test_a_resource_never_runs_where_its_data_is_not(pair: tuple[App, App]) -> None:
    """With its place gone, a call on a database fails at once even when this server is the only
    one left (it does not run here, where the data is not); once a server of that place is
    back, the call runs there, before this server's next heartbeat has seen it come."""
    first, second = pair
    db = await make_db(first)
    first.workers.leave()
    second.router.refresh()
    assert second.router.places == {second.workers.place}
    with pytest.raises(BackendUnavailable, match="no server is running"):
        await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    first.workers.register()  # started again; the second has not looked since
    assert second.router.places == {second.workers.place}
    outcome = await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    assert outcome.unwrap()["rows"] == [[7]]
    with second.store.transaction() as session:
        task = session.get(Task, outcome.task_id)
        assert task is not None and (task.place, task.worker_id) == (first.workers.place, first.workers.id)


async def test_with_one_place_alive_and_its_own_resources_nothing_is_routed(pair: tuple[App, App]) -> None:
    first, second = pair
    db = await make_db(second)
    first.workers.leave()
    second.router.refresh()
    assert not second.router.foreign, "every live resource was made at the second's place"
    outcome = await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    with second.store.transaction() as session:
        task = session.get(Task, outcome.task_id)
        assert task is not None and task.place is None and task.worker_id == second.workers.id


async def test_an_idle_router_sleeps_until_a_call_is_routed(pair: tuple[App, App]) -> None:
    """With one place alive, nothing stray and nothing awaited elsewhere, the routing loop
    sleeps instead of polling the store twenty times a second; a call routed to another place
    wakes it, and its result is collected."""
    first, second = pair
    db = await make_db(first)
    first.workers.leave()
    second.router.refresh()
    with anyio.fail_after(30):
        while not second.router.idle():  # noqa: ASYNC110 - its loop finishes the poll it is in
            await anyio.sleep(0.01)
    first.workers.register()  # back; the second has not looked, and its loop still sleeps
    assert second.router.idle()
    with anyio.fail_after(30):
        outcome = await second.call("local", "db_query", {"db_id": db, "sql": "SELECT n FROM t"})
    assert outcome.unwrap()["rows"] == [[7]]
    with anyio.fail_after(30):
        while not second.router.idle():  # noqa: ASYNC110 - nothing is awaited elsewhere any more
            await anyio.sleep(0.01)
