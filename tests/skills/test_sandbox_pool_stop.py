"""A bounded stop of the warm pool (a stdio server's) leaves what the engine is still
making to a janitor, not to nobody (fast tier: the in-memory driver, its create held)."""

from __future__ import annotations

import threading

import anyio
import pytest

from sandbox.driver import LABEL_SANDBOX, SandboxHandle, SandboxSpec
from skills.sandbox.pool import Shape, WarmPool
from tests.fakes import MemoryDriver
from tests.polling import until

pytestmark = pytest.mark.anyio


class SlowDriver(MemoryDriver):
    """Creates wait until released, as an engine under load does."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.release = threading.Event()

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        self.asked.set()
        self.release.wait(30)
        return super().create(spec)


async def test_a_bounded_stop_leaves_a_sandbox_being_made_to_a_janitor() -> None:
    driver = SlowDriver()
    pool = WarmPool(driver, "store", [Shape("python", "img")], size=1, memory_budget_mib=4096, drain_s=0.1)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.run)
            await until(driver.asked.is_set, "the pool to ask for a sandbox")
            group.cancel_scope.cancel()
        assert len(driver.abandoned) == 1 and driver.abandoned[0].startswith(f"{LABEL_SANDBOX}=sb_")
    finally:
        driver.release.set()


async def test_an_unbounded_stop_waits_and_removes_it_itself() -> None:
    driver = SlowDriver()
    pool = WarmPool(driver, "store", [Shape("python", "img")], size=1, memory_budget_mib=4096)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(driver.asked.is_set, "the pool to ask for a sandbox")
        group.cancel_scope.cancel()
        driver.release.set()
    assert driver.abandoned == []
    assert driver.labels == {}  # made whole, then removed


class EnginesDriver(MemoryDriver):
    """Several engines as the pool sees them (sandbox/engines.py): each container's engine has
    some room left, and some may be on an engine being drained."""

    def __init__(self) -> None:
        super().__init__()
        self.draining: set[str] = set()
        self.rooms: dict[str, int] = {}

    def is_draining(self, container_id: str) -> bool:
        return container_id in self.draining

    def room_of(self, container_id: str) -> int:
        return self.rooms.get(container_id, 0)


async def test_a_warm_sandbox_on_an_engine_being_drained_is_not_handed_out() -> None:
    driver = EnginesDriver()
    shape = Shape("python", "img")
    pool = WarmPool(driver, "store", [shape], size=2, memory_budget_mib=4096)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(lambda: pool.ready == 2, "the pool full")
        first = pool._ready[shape][0]
        driver.draining.add(first.handle.container_id)
        claimed = await pool.claim(shape)
        assert claimed is not None and claimed.handle.container_id != first.handle.container_id
        await until(lambda: first.handle.container_id not in driver.labels, "the drained one removed")
        group.cancel_scope.cancel()


async def test_a_claim_takes_the_warm_sandbox_on_the_engine_with_the_most_room() -> None:
    driver = EnginesDriver()
    shape = Shape("python", "img")
    pool = WarmPool(driver, "store", [shape], size=3, memory_budget_mib=4096)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(lambda: pool.ready == 3, "the pool full")
        ids = [warm.handle.container_id for warm in pool._ready[shape]]
        driver.rooms = {ids[0]: 1, ids[1]: 9, ids[2]: 4}
        claimed = await pool.claim(shape)
        assert claimed is not None and claimed.handle.container_id == ids[1]
        group.cancel_scope.cancel()


async def test_a_claim_cancelled_before_its_ping_gives_the_warm_sandbox_back() -> None:
    driver = MemoryDriver()
    shape = Shape("python", "img")
    pool = WarmPool(driver, "store", [shape], size=1, memory_budget_mib=4096)
    async with anyio.create_task_group() as group:
        group.start_soon(pool.run)
        await until(lambda: pool.ready == 1, "the pool full")
        warm = pool._ready[shape][0]
        with anyio.CancelScope() as scope:
            scope.cancel()  # the claimer's client went away as it claimed
            await pool.claim(shape)
        assert list(pool._ready[shape]) == [warm] and warm.sandbox_id not in pool._claiming
        claimed = await pool.claim(shape)
        assert claimed is warm
        group.cancel_scope.cancel()
