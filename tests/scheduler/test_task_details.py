"""What a task row keeps of its call: details, never contents or secrets; whole arguments
only when nothing was cut (so a task can run again after a restart); a retention for it all."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from sqlalchemy import select

from scheduler.models import Task
from scheduler.pricing import PriceCatalog
from scheduler.store import Store
from scheduler.task_details import SECRET, summarize
from scheduler.tasks import OpBinding, Scheduler, TaskContext

pytestmark = pytest.mark.anyio

CATALOG = PriceCatalog("test-details", "USD", task_fees={"default": 1})
BIG = "x" * 100_000


async def echo(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"content": args.get("content", ""), "connection_string": "postgresql://app:hunter2@127.0.0.1/db"}


WRITE = OpBinding("t", "write", echo, secret=frozenset({"env", "connection_string"}))
LONG = OpBinding("t", "long", echo, keeps_result=lambda args: True)


def test_details_cut_long_strings_and_hide_secrets() -> None:
    kept = summarize({"path": "a.txt", "content": BIG, "env": {"TOKEN": "s3cret"}, "n": 3}, {"env"})
    assert kept.value["path"] == "a.txt" and kept.value["n"] == 3
    assert kept.value["env"] == {"TOKEN": SECRET}
    assert kept.value["content"].endswith("[100000 bytes, not kept]") and len(kept.value["content"]) < 200
    assert not kept.whole
    assert summarize({"path": "a.txt", "env": {}}, {"env"}).whole


async def run(store: Store, binding: OpBinding, args: dict[str, Any]) -> Any:
    scheduler = Scheduler(store, CATALOG)
    scheduler.bind(binding)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        outcome = await scheduler.run("acme", binding, args)
        group.cancel_scope.cancel()
    return scheduler, outcome


def stored(store: Store, task_id: str) -> Task:
    with store.transaction() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


async def test_a_task_row_keeps_no_contents_and_no_secrets(store: Store) -> None:
    _, outcome = await run(store, WRITE, {"content": BIG, "env": {"TOKEN": "s3cret"}})
    assert outcome.result["content"] == BIG, "the caller gets the whole answer"
    task = stored(store, outcome.task_id)
    assert not task.args_whole and "s3cret" not in str(task.args) and BIG not in str(task.args)
    assert task.result is not None and BIG not in str(task.result) and "hunter2" not in str(task.result)
    assert task.result["cost"] == outcome.result["cost"], "what an operator needs is kept"


async def test_the_result_a_task_handle_is_polled_for_is_kept_whole(store: Store) -> None:
    _, outcome = await run(store, LONG, {"content": BIG})
    assert stored(store, outcome.task_id).result == outcome.result


async def test_a_queued_task_whose_arguments_were_cut_fails_cleanly_after_a_restart(store: Store) -> None:
    first = Scheduler(store, CATALOG)  # never serving: its tasks stay queued, as a dead server leaves them
    cut = first.submit("acme", WRITE, {"content": BIG})
    whole = first.submit("acme", WRITE, {"content": "small"})
    second = Scheduler(store, CATALOG)
    second.bind(WRITE)
    assert cut in second.recover()  # before serving, as a starting server does
    async with anyio.create_task_group() as group:
        group.start_soon(second.serve)
        assert (await second.wait(whole)).state == "succeeded"
        group.cancel_scope.cancel()
    task = stored(store, cut)
    assert task.state == "failed" and "never kept" in (task.error_message or "")


async def test_details_past_their_retention_are_dropped_and_the_rest_kept(store: Store) -> None:
    scheduler, outcome = await run(store, LONG, {"content": "small"})
    assert scheduler.prune(retention_s=3600) == 0
    assert scheduler.prune(retention_s=0) == 1
    task = stored(store, outcome.task_id)
    assert task.result is None and task.args == {} and task.cost_micros == outcome.cost_micros == 1
    assert task.state == "succeeded" and task.finished_at is not None
    with store.transaction() as session:
        assert session.scalars(select(Task.id)).all() == [outcome.task_id]
