"""The sandbox manager on the in-memory driver (the fast tier): leases, the budget,
dead sandboxes and strays. The same paths run on Docker in test_sandbox_skill.py
and test_lease_budget.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from common.errors import BudgetExceeded, NotFound, QuotaExceeded
from runtime.storage import open_store
from runtime.tenants import ensure_tenant, update_tenant
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, AgentRequest, Command, Limits, SandboxSpec
from sandbox.templates import TEMPLATES
from scheduler.leases import Leases
from scheduler.models import Lease, Tenant, utcnow
from scheduler.pricing import PriceCatalog
from scheduler.store import Store
from skills.sandbox.manager import SandboxManager
from skills.sandbox.pool import Shape, WarmPool
from skills.sandbox.rows import Sandbox
from tests.fakes import MemoryDriver
from tests.polling import until

pytestmark = pytest.mark.anyio

PYTHON = TEMPLATES["python"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_tenant(store, "acme")
    return store


@pytest.fixture
def driver() -> MemoryDriver:
    return MemoryDriver()


@pytest.fixture
def manager(store: Store, driver: MemoryDriver) -> SandboxManager:
    images = {"sandbox": "image:test", "dev": "image:dev"}
    return SandboxManager(store, driver, Leases(store, PriceCatalog.load(), lease_s=60.0), images)


def held(store: Store) -> int:
    with store.transaction() as session:
        tenant = session.get(Tenant, "acme")
        assert tenant is not None
        return tenant.held_micros


async def test_a_session_sandbox_holds_a_lease_and_releases_it_when_destroyed(
    manager: SandboxManager, store: Store
) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    # 60 s of 1 vCPU (14 micro-units a second), 512 MiB (2.25 a second) and a 2 GiB disk
    # (150 a GiB-hour: 5 for the minute), rounded per meter.
    assert held(store) == 840 + 135 + 5
    await manager.destroy(record.id, "destroyed_by_owner")
    assert held(store) == 0
    with store.transaction() as session:
        lease = session.get(Lease, record.id)
        assert lease is not None and lease.end_reason == "destroyed_by_owner"


async def test_a_one_task_sandbox_is_paid_by_its_task_not_a_lease(manager: SandboxManager, store: Store) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 60, "t_task")
    with store.transaction() as session:
        assert session.get(Lease, record.id) is None
    usage = await manager.destroy(record.id, "task_done")
    assert usage.get("sandbox.mib_ms") >= 0 and held(store) == 0


async def test_a_sandbox_the_budget_cannot_cover_is_refused_before_any_container(
    manager: SandboxManager, store: Store, driver: MemoryDriver
) -> None:
    update_tenant(store, "acme", budget_micros=500)
    with pytest.raises(BudgetExceeded, match="this sandbox for 60 s may cost up to"):
        await manager.create("acme", PYTHON, Limits(), 600, None)
    assert driver.labels == {}
    with store.transaction() as session:
        assert session.scalars(select(Sandbox)).all() == []


async def test_the_live_count_quota_counts_what_lives(manager: SandboxManager, store: Store) -> None:
    update_tenant(store, "acme", max_live_sandboxes=1)
    first = await manager.create("acme", PYTHON, Limits(), 600, None)
    with pytest.raises(QuotaExceeded, match="you have 1 live sandboxes"):
        await manager.create("acme", PYTHON, Limits(), 600, None)
    await manager.destroy(first.id, "destroyed_by_owner")
    await manager.destroy((await manager.create("acme", PYTHON, Limits(), 600, None)).id, "destroyed_by_owner")


async def test_a_create_the_quota_refuses_leaves_its_warm_sandbox_in_the_pool(
    store: Store, driver: MemoryDriver
) -> None:
    # The quota is checked in the record's transaction, after the claim: the sandbox goes back unused.
    pool = WarmPool(driver, store.store_id, [Shape("python", "image:test")], size=1, memory_budget_mib=4096)
    leases = Leases(store, PriceCatalog.load(), lease_s=60.0)
    manager = SandboxManager(store, driver, leases, {"sandbox": "image:test"}, pool)
    update_tenant(store, "acme", max_live_sandboxes=0)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(lambda: pool.ready == 1, "the pool to fill")
        warm_id = next(iter(driver.labels))
        with pytest.raises(QuotaExceeded):
            await manager.create("acme", PYTHON, Limits(), 600, "t_1")
        assert pool.ready == 1
        update_tenant(store, "acme", max_live_sandboxes=1)
        record = await manager.create("acme", PYTHON, Limits(), 600, "t_1")
        assert record.container_id == warm_id and not pool.holds(record.id)
        group.cancel_scope.cancel()


async def test_two_creates_at_once_do_not_both_pass_the_quota(store: Store, driver: MemoryDriver) -> None:
    # Each checks the quota in the transaction that records it, the tenant's row locked.
    pool = WarmPool(driver, store.store_id, [Shape("python", "image:test")], size=2, memory_budget_mib=4096)
    manager = SandboxManager(store, driver, Leases(store, PriceCatalog.load(), lease_s=60.0), {}, pool)
    update_tenant(store, "acme", max_live_sandboxes=1)
    outcomes: list[str] = []

    async def create() -> None:
        try:
            await manager.create("acme", PYTHON, Limits(), 600, "t_1")
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")

    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(lambda: pool.ready == 2, "the pool to fill")
        async with anyio.create_task_group() as both:
            both.start_soon(create)
            both.start_soon(create)
        group.cancel_scope.cancel()
    assert sorted(outcomes) == ["created", "refused"]


async def test_a_dead_sandbox_is_failed_billed_to_its_death_and_says_so(
    manager: SandboxManager, store: Store, driver: MemoryDriver
) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    assert record.container_id is not None
    driver.kill(record.container_id)
    died_at = driver.died[record.container_id].finished_at
    assert record.id in await manager.reap()
    with store.transaction() as session:
        row = session.get(Sandbox, record.id)
        lease = session.get(Lease, record.id)
        assert row is not None and lease is not None
        assert row.state == "failed" and row.destroy_reason == "died: it ran out of memory"
        assert lease.ended_at is not None and lease.billed_until == lease.ended_at <= died_at
    with pytest.raises(NotFound, match="has failed"):
        manager.get("acme", record.id)
    assert driver.labels == {}, "its container is removed"
    assert held(store) == 0


async def test_a_dead_sandbox_met_by_a_call_is_marked_failed_at_once(
    manager: SandboxManager, driver: MemoryDriver
) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    assert record.container_id is not None
    driver.kill(record.container_id)
    with pytest.raises(NotFound):
        await manager.call(record, AgentRequest(command=Command(argv=("true",))), 10)
    with pytest.raises(NotFound, match="has failed"):
        manager.get("acme", record.id)


async def test_strays_are_removed_and_live_ones_kept(
    manager: SandboxManager, store: Store, driver: MemoryDriver
) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    stray = driver.create(SandboxSpec("image:test", labels={LABEL_STORE: store.store_id, LABEL_SANDBOX: "sb_gone"}))
    reaped = await manager.reap()
    assert stray.container_id in reaped
    assert record.container_id in driver.labels
    await manager.destroy(record.id, "destroyed_by_owner")


async def test_a_destroy_cancelled_on_its_way_still_removes_the_container(
    manager: SandboxManager, driver: MemoryDriver
) -> None:
    """A server shutting down cancels the reaper between a record's end and its container's
    removal: the removal still happens, else the container outlives its record."""
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await manager.destroy(record.id, "destroyed_by_owner")
    assert manager.row(record.id).state == "destroyed"
    assert driver.labels == {} and not manager.removing


async def test_a_sandbox_stopped_for_its_budget_is_destroyed_and_says_why(manager: SandboxManager) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    await manager.stop_for_budget(record.id)
    with pytest.raises(NotFound, match="budget could not cover its next lease"):
        manager.get("acme", record.id)


async def test_a_sandbox_that_expired_by_itself_is_billed_to_its_end_and_says_so(
    manager: SandboxManager, store: Store, driver: MemoryDriver
) -> None:
    record = await manager.create("acme", PYTHON, Limits(), 600, None)
    assert record.container_id is not None
    assert driver.requests[-1].idle_s == 600, "handed over: it ends by itself after its ttl_s idle"
    ended_at = utcnow()  # a moment ago, by the time the reaper looks
    driver.expire(record.container_id, ended_at)
    assert record.id in await manager.reap()
    with store.transaction() as session:
        row = session.get(Sandbox, record.id)
        lease = session.get(Lease, record.id)
        assert row is not None and lease is not None
        assert (row.state, row.destroy_reason, row.destroyed_at) == ("destroyed", "idle_ttl", ended_at)
        # Billed to the moment it ended (by whole milliseconds), not to when the reaper came.
        assert lease.ended_at == lease.billed_until and abs(lease.billed_until - ended_at) < timedelta(milliseconds=1)
    with pytest.raises(NotFound, match="expired after 600 s without a call"):
        manager.get("acme", record.id)
    assert driver.labels == {} and held(store) == 0
