"""The scheduler's lifecycle, deadlines, cancellation, recovery and money, on a real SQLite store.

Handlers here are plain functions: this tier needs no Docker. The same paths run
with real sandboxes in tests/skills and tests/e2e.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import func, select

from common.errors import BudgetExceeded, InvalidInput
from runtime.tenants import ensure_tenant
from scheduler.models import LedgerEntry, Task, Tenant
from scheduler.pricing import PriceCatalog, Rate, Usage
from scheduler.store import Store
from scheduler.tasks import OpBinding, Scheduler, TaskContext
from tests.polling import until

pytestmark = pytest.mark.anyio

# 10 micro-units a task, 1 per vCPU-millisecond: amounts in these tests are easy to read.
CATALOG = PriceCatalog("test-1", "USD", task_fees={"default": 10}, rates={"sandbox.vcpu_ms": Rate(1, 1)})


def scheduler_on(store: Store) -> Scheduler:
    scheduler = Scheduler(store, CATALOG, concurrency=4)
    scheduler.deadline_overhead_s = 0.0
    return scheduler


async def ok_handler(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.add_usage(Usage.of({"sandbox.vcpu_ms": args.get("vcpu_ms", 0)}))
    return {"echo": args.get("value")}


async def sleepy_handler(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.add_usage(Usage.of({"sandbox.vcpu_ms": 5}))
    await anyio.sleep(60)
    return {}


async def bad_input_handler(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    raise InvalidInput("no good: fix it.")


async def crashing_handler(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("secret internals")


async def grouped_handler(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    """Raises from inside a task group: anyio wraps the error in an ExceptionGroup."""

    async def refuse() -> None:
        raise InvalidInput("no good from inside a group: fix it.") if args.get("ours") else RuntimeError("secret")

    async with anyio.create_task_group() as group:
        group.start_soon(refuse)
    return {}


OK = OpBinding("t", "ok", ok_handler, worst_case=lambda a: Usage.of({"sandbox.vcpu_ms": 1000}))
SLEEPY = OpBinding(
    "t",
    "sleepy",
    sleepy_handler,
    timeout_s=lambda a: float(a.get("timeout_s", 60)),
    worst_case=lambda a: Usage.of({"sandbox.vcpu_ms": 5}),
)
BAD = OpBinding("t", "bad", bad_input_handler)
CRASH = OpBinding("t", "crash", crashing_handler)
GROUPED = OpBinding("t", "grouped", grouped_handler)


def tenant(store: Store) -> Tenant:
    with store.transaction() as session:
        row = session.get(Tenant, "acme")
        assert row is not None
        return row


def ledger_total(store: Store) -> int:
    with store.transaction() as session:
        return int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))) or 0)


async def run_with(store: Store, binding: OpBinding, args: dict[str, Any]) -> Any:
    scheduler = scheduler_on(store)
    for b in (OK, SLEEPY, BAD, CRASH, GROUPED):
        scheduler.bind(b)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        outcome = await scheduler.run("acme", binding, args)
        group.cancel_scope.cancel()
    return outcome


async def test_a_task_succeeds_and_is_billed_fee_plus_usage(store: Store) -> None:
    outcome = await run_with(store, OK, {"value": 42, "vcpu_ms": 800})
    assert outcome.state == "succeeded"
    assert outcome.result["echo"] == 42
    assert outcome.cost_micros == 10 + 800
    assert outcome.result["cost"] == {"micros": 810, "amount": "0.000810 USD"}
    assert ledger_total(store) == 810
    assert tenant(store).spent_micros == 810
    assert tenant(store).held_micros == 0
    with store.transaction() as session:
        task = session.get(Task, outcome.task_id)
        assert task is not None and task.attempts == 1 and task.finished_at is not None


async def test_a_task_is_never_charged_more_than_it_held(store: Store) -> None:
    """Usage past the op's worst case (1,000 vCPU ms here) is recorded, and charged only up to
    the hold, which is what admission checked against the budget."""
    outcome = await run_with(store, OK, {"value": 1, "vcpu_ms": 2000})
    assert outcome.cost_micros == 10 + 1000
    assert ledger_total(store) == tenant(store).spent_micros == 1010
    with store.transaction() as session:
        used = session.scalar(select(LedgerEntry.quantity).where(LedgerEntry.item == "sandbox.vcpu_ms"))
    assert used == 2000


async def test_a_caller_error_with_no_usage_is_free_and_releases_the_hold(store: Store) -> None:
    outcome = await run_with(store, BAD, {})
    assert outcome.state == "failed"
    assert outcome.error.message == "no good: fix it."
    assert outcome.cost_micros == 0 and ledger_total(store) == 0
    assert tenant(store).held_micros == 0


async def test_a_crash_hides_internals_and_names_the_task(store: Store) -> None:
    outcome = await run_with(store, CRASH, {})
    assert outcome.state == "failed"
    assert "secret" not in outcome.error.message
    assert outcome.task_id in outcome.error.message


async def test_an_error_of_ours_raised_in_a_task_group_reaches_the_caller_as_itself(store: Store) -> None:
    outcome = await run_with(store, GROUPED, {"ours": True})
    assert (outcome.state, outcome.error.message) == ("failed", "no good from inside a group: fix it.")
    crashed = await run_with(store, GROUPED, {})  # anything else in a group is still an internal error
    assert "secret" not in crashed.error.message and crashed.task_id in crashed.error.message


async def test_the_deadline_stops_the_task_and_bills_what_ran(store: Store) -> None:
    with anyio.fail_after(10):
        outcome = await run_with(store, SLEEPY, {"timeout_s": 0.2})
    assert outcome.state == "timed_out"
    assert "deadline" in outcome.error.message
    assert outcome.cost_micros == 10 + 5
    assert tenant(store).held_micros == 0


async def test_cancel_stops_a_running_task(store: Store) -> None:
    started = anyio.Event()

    async def announcing(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        started.set()
        return await sleepy_handler(ctx, args)

    binding = OpBinding("t", "sleepy", announcing, worst_case=SLEEPY.worst_case)
    scheduler = scheduler_on(store)
    scheduler.bind(binding)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        task_id = scheduler.submit("acme", binding, {})
        with anyio.fail_after(5):
            await started.wait()
            assert await scheduler.cancel("acme", task_id) == "cancelled"
        group.cancel_scope.cancel()
    assert ledger_total(store) == 15
    assert tenant(store).held_micros == 0


async def test_a_task_cancelled_before_it_started_costs_nothing(store: Store) -> None:
    scheduler = scheduler_on(store)  # not serving: the task stays queued
    task_id = scheduler.submit("acme", OK, {})
    assert tenant(store).held_micros > 0
    assert await scheduler.cancel("acme", task_id) == "cancelled"
    assert ledger_total(store) == 0, "no fee for a task that never ran"
    assert tenant(store).held_micros == 0
    assert "nothing was charged" in (scheduler.get("acme", task_id).error_message or "")


async def test_reads_and_cancels_start_while_long_tasks_hold_every_slot(store: Store) -> None:
    """One tenant's long calls fill the slots: a list, and the cancel that stops them, still
    run at once, and the queued call waits for a slot, not for the reads."""
    running = anyio.Event()

    async def announcing(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        running.set()
        return await sleepy_handler(ctx, args)

    long_call = OpBinding("t", "sleepy", announcing, worst_case=SLEEPY.worst_case)
    listing = OpBinding("t", "list", ok_handler, always_admitted=True)
    scheduler = Scheduler(store, CATALOG, concurrency=1)
    for binding in (long_call, listing, OK):
        scheduler.bind(binding)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        long_id = scheduler.submit("acme", long_call, {})
        with anyio.fail_after(10):
            await running.wait()  # the only slot is taken
            queued = scheduler.submit("acme", OK, {"value": 1})
            listed = await scheduler.run("acme", listing, {"value": "here"})
            assert listed.state == "succeeded" and (listed.result or {}).get("echo") == "here"
            assert scheduler.get("acme", queued).state == "queued", "a paid call still waits for a slot"
            assert await scheduler.cancel("acme", long_id) == "cancelled"
            done = await scheduler.wait(queued)
            assert done.state == "succeeded"
        group.cancel_scope.cancel()


async def test_a_free_slot_goes_to_the_tenant_with_the_fewest_running_not_the_longest_queue(store: Store) -> None:
    ensure_tenant(store, "other")
    started: list[str] = []
    go = anyio.Event()

    async def recording(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        started.append(args["name"])
        await go.wait()
        return {}

    binding = OpBinding("t", "recording", recording)
    scheduler = Scheduler(store, CATALOG, concurrency=1)
    scheduler.bind(binding)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        ids = [scheduler.submit("acme", binding, {"name": f"acme-{i}"}) for i in range(4)]
        ids.append(scheduler.submit("other", binding, {"name": "other-0"}))
        go.set()
        with anyio.fail_after(10):
            for task_id in ids:
                await scheduler.wait(task_id)
        group.cancel_scope.cancel()
    assert started == ["acme-0", "other-0", "acme-1", "acme-2", "acme-3"]


async def test_a_tenant_with_nothing_running_starts_a_call_while_anothers_fill_every_slot(store: Store) -> None:
    """Another tenant's long calls in every slot keep a tenant with nothing running from
    starting a call: its oldest starts beyond the slots, and when that ends, its next; a
    call it sends meanwhile waits behind its own older ones."""
    ensure_tenant(store, "other")
    gates: dict[str, anyio.Event] = {}

    async def gated(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        await gates.setdefault(args["gate"], anyio.Event()).wait()
        return {}

    binding = OpBinding("t", "gated", gated)
    scheduler = Scheduler(store, CATALOG, concurrency=2)
    scheduler.bind(binding)

    def states(tenant: str, ids: list[str]) -> list[str]:
        return [scheduler.get(tenant, task_id).state for task_id in ids]

    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        await anyio.lowlevel.checkpoint()  # serving
        hogs = [scheduler.submit("acme", binding, {"gate": "acme"}) for _ in range(3)]
        others = [scheduler.submit("other", binding, {"gate": f"other-{i}"}) for i in range(2)]
        assert states("acme", hogs) == ["running", "running", "queued"]
        assert states("other", others) == ["running", "queued"]
        with anyio.fail_after(10):
            gates.setdefault("other-0", anyio.Event()).set()
            await scheduler.wait(others[0])
            await until(lambda: states("other", others) == ["succeeded", "running"], "its next call to start")
            others.append(scheduler.submit("other", binding, {"gate": "other-2"}))
            assert states("other", others)[2] == "queued", "behind its own running call"
            assert states("acme", hogs) == ["running", "running", "queued"]
            for gate in ("acme", "other-1", "other-2"):
                gates.setdefault(gate, anyio.Event()).set()
            for task_id in hogs + others:
                await scheduler.wait(task_id)
        group.cancel_scope.cancel()
    assert set(states("acme", hogs) + states("other", others)) == {"succeeded"}


async def test_a_cancel_right_after_the_start_stops_the_task_before_its_handler_runs(store: Store) -> None:
    """Between its start and its first step a task is already running: a cancel then must
    stop it, not mark it cancelled while its handler goes on to run unbilled."""
    ran = anyio.Event()

    async def marking(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()  # its first step: what a real handler's first await is
        ran.set()
        return {}

    binding = OpBinding("t", "marking", marking)
    scheduler = Scheduler(store, CATALOG, concurrency=1)
    for each in (binding, OK):
        scheduler.bind(each)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        await anyio.lowlevel.checkpoint()  # serving: the next task starts at once
        task_id = scheduler.submit("acme", binding, {})
        assert scheduler.get("acme", task_id).state == "running"
        with anyio.fail_after(5):
            assert await scheduler.cancel("acme", task_id) == "cancelled"
            after = scheduler.submit("acme", OK, {})  # runs once the cancelled one left the only slot
            assert (await scheduler.wait(after)).state == "succeeded"
        group.cancel_scope.cancel()
    assert not ran.is_set(), "the handler of a task cancelled before its first step went no further"
    assert tenant(store).held_micros == 0


async def test_cancel_of_another_tenants_task_is_not_found(store: Store) -> None:
    ensure_tenant(store, "other")
    scheduler = scheduler_on(store)
    task_id = scheduler.submit("acme", OK, {})
    with pytest.raises(Exception, match="no task"):
        await scheduler.cancel("other", task_id)


async def test_budget_admits_only_what_it_covers(store: Store) -> None:
    worst = CATALOG.worst_case("t.ok", Usage.of({"sandbox.vcpu_ms": 1000}))
    with store.transaction() as session:
        row = session.get(Tenant, "acme")
        assert row is not None
        row.budget_micros = worst * 3
    scheduler = scheduler_on(store)
    for _ in range(3):
        scheduler.submit("acme", OK, {})
    with pytest.raises(BudgetExceeded, match="left"):
        scheduler.submit("acme", OK, {})
    assert tenant(store).held_micros == worst * 3


async def test_a_budget_refusal_says_what_to_lower_only_where_lowering_could_let_it_in(store: Store) -> None:
    """The op's own words ("a smaller vcpu_ms"), and only while what is left covers its fee;
    an op whose hold nothing it asks for changes is told to raise the budget, nothing more."""
    sized = OpBinding(
        "t",
        "sized",
        ok_handler,
        worst_case=lambda a: Usage.of({"sandbox.vcpu_ms": a["vcpu_ms"]}),
        ask_less="less vcpu_ms",
    )
    with store.transaction() as session:
        row = session.get(Tenant, "acme")
        assert row is not None
        row.budget_micros = 15  # above the fee (10), below a call of 1000 vCPU-ms
    scheduler = scheduler_on(store)
    with pytest.raises(BudgetExceeded) as sized_refusal:
        scheduler.submit("acme", sized, {"vcpu_ms": 1000})
    assert str(sized_refusal.value).endswith("raise the budget, or ask for less (less vcpu_ms).")
    with pytest.raises(BudgetExceeded) as plain_refusal:
        scheduler.submit("acme", OK, {})
    assert str(plain_refusal.value).endswith("of the budget is left: raise the budget.")
    with store.transaction() as session:
        row = session.get(Tenant, "acme")
        assert row is not None
        row.budget_micros = 5  # below the fee: no smaller call is covered
    with pytest.raises(BudgetExceeded) as poor_refusal:
        scheduler.submit("acme", sized, {"vcpu_ms": 1000})
    assert str(poor_refusal.value).endswith("of the budget is left: raise the budget.")
    assert tenant(store).held_micros == 0


async def test_settling_twice_charges_once(store: Store) -> None:
    scheduler = scheduler_on(store)
    task_id = scheduler.submit("acme", OK, {})
    scheduler._finish(task_id, "succeeded", {}, None, Usage.of({"sandbox.vcpu_ms": 100}))
    scheduler._finish(task_id, "succeeded", {}, None, Usage.of({"sandbox.vcpu_ms": 100}))
    assert ledger_total(store) == 110
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 2


async def test_recovery_fails_orphans_and_reruns_idempotent_ones(store: Store) -> None:
    first = scheduler_on(store)
    plain = first.submit("acme", OK, {"value": 1})
    retry = first.submit("acme", OpBinding("t", "ok", ok_handler, idempotent=True), {"value": 2})
    with store.transaction() as session:  # as if a worker had claimed both, then the process died
        for task_id in (plain, retry):
            task = session.get(Task, task_id)
            assert task is not None
            task.state, task.attempts = "running", 1

    second = scheduler_on(store)
    second.bind(OK)
    assert second.recover() == [plain]
    async with anyio.create_task_group() as group:
        group.start_soon(second.serve)
        with anyio.fail_after(5):
            outcome = await second.wait(retry)
        group.cancel_scope.cancel()
    assert outcome.state == "succeeded"
    failed = await second.wait(plain)
    assert failed.state == "failed" and failed.error is not None and "server stopped" in failed.error.message
    assert outcome.result is not None and outcome.result["echo"] == 2
    assert tenant(store).held_micros == 0
    assert ledger_total(store) == 10  # only the retried task ran and was charged
