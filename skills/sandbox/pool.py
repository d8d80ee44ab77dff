"""A warm pool: sandboxes started ahead of need, handed out in a millisecond.

The pool keeps ``size`` sandboxes of the default shape running and attached,
their agent and Python interpreter already up. A claim takes one, checks it
answers (never a dead one), and wakes the refill loop, which starts a
replacement at once. The pool is capped by a host memory budget and drained
when the server stops. Pooled sandboxes carry this store's label and an id
the pool holds, so the reaper leaves them alone; after a crash they have
neither a record nor a pool, and the reaper removes them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import anyio

from common.errors import CloudSkillsError
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, Limits, SandboxDriver, SandboxHandle, SandboxSpec
from scheduler.tasks import new_id

log = logging.getLogger("cloudskills.pool")

LABEL_POOL = "cloudskills.pool"
# After a failed start, wait before trying again (the engine may be down).
RETRY_AFTER_FAILURE_S = 5.0


@dataclass(frozen=True)
class WarmSandbox:
    sandbox_id: str
    handle: SandboxHandle


class WarmPool:
    def __init__(
        self,
        driver: SandboxDriver,
        store_id: str,
        image: str,
        size: int,
        memory_budget_mib: int,
        limits: Limits | None = None,
        runtime: str | None = None,
    ) -> None:
        self.driver = driver
        self.store_id = store_id
        self.image = image
        self.limits = limits or Limits()
        self.runtime = runtime
        self.size = max(0, min(size, memory_budget_mib // self.limits.memory_mib))
        self._ready: deque[WarmSandbox] = deque()
        # Ids of sandboxes being started: the reaper must not take them for strays.
        self._starting_ids: set[str] = set()
        # Ids claimed but not yet recorded by the claimer: also not strays.
        self._claiming: set[str] = set()
        self._wanted = anyio.Event()
        self.stats = {"claimed": 0, "missed": 0, "dead": 0}

    def fits(self, limits: Limits, runtime: str | None) -> bool:
        return self.size > 0 and limits == self.limits and runtime == self.runtime

    def holds(self, sandbox_id: str) -> bool:
        """Whether the pool owns this sandbox (ready, or still starting)."""
        if sandbox_id in self._starting_ids or sandbox_id in self._claiming:
            return True
        return any(w.sandbox_id == sandbox_id for w in self._ready)

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def claim(self) -> WarmSandbox | None:
        """A live warm sandbox, or None when the pool is empty (the caller starts one cold).

        The pool keeps holding the sandbox it returns (the reaper leaves it alone)
        until the caller, having written its record, calls ``handed_over``."""
        self._wanted.set()
        while self._ready:
            warm = self._ready.popleft()
            self._claiming.add(warm.sandbox_id)
            if await anyio.to_thread.run_sync(self.driver.ping, warm.handle):
                self.stats["claimed"] += 1
                return warm
            self._claiming.discard(warm.sandbox_id)
            self.stats["dead"] += 1
            await self._discard(warm)
        self.stats["missed"] += 1
        return None

    def handed_over(self, sandbox_id: str) -> None:
        self._claiming.discard(sandbox_id)

    async def run(self) -> None:
        """Keep the pool full until cancelled; then drain it."""
        try:
            while True:
                if len(self._ready) + len(self._starting_ids) < self.size:
                    # Shielded: a sandbox being born when the server stops must
                    # land in the pool, so the drain below removes it.
                    with anyio.CancelScope(shield=True):
                        warm = await self._start_one()
                    if warm is None:
                        await anyio.sleep(RETRY_AFTER_FAILURE_S)
                    else:
                        self._ready.append(warm)
                    continue
                self._wanted = anyio.Event()
                await self._wanted.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.drain()

    async def _start_one(self) -> WarmSandbox | None:
        sandbox_id = new_id("sb")
        self._starting_ids.add(sandbox_id)
        try:
            return await self._create(sandbox_id)
        finally:
            self._starting_ids.discard(sandbox_id)

    async def _create(self, sandbox_id: str) -> WarmSandbox | None:
        spec = SandboxSpec(
            image=self.image,
            limits=self.limits,
            runtime=self.runtime,
            labels={LABEL_STORE: self.store_id, LABEL_SANDBOX: sandbox_id, LABEL_POOL: "1"},
        )
        try:
            handle = await anyio.to_thread.run_sync(self.driver.create, spec)
            # Up means answering: the agent and its interpreter have started.
            if not await anyio.to_thread.run_sync(self.driver.ping, handle, 20.0):
                await anyio.to_thread.run_sync(self.driver.destroy, handle.container_id)
                return None
        except CloudSkillsError as exc:
            log.warning("warm pool: could not start a sandbox: %s", exc)
            return None
        except Exception:
            # The pool is an optimisation: a failure here must not take the server down.
            log.exception("warm pool: starting a sandbox failed")
            return None
        return WarmSandbox(sandbox_id, handle)

    async def _discard(self, warm: WarmSandbox) -> None:
        try:
            await anyio.to_thread.run_sync(self.driver.destroy, warm.handle.container_id)
        except CloudSkillsError as exc:
            log.warning("warm pool: could not remove a dead sandbox: %s", exc)

    async def drain(self) -> None:
        """Remove every warm sandbox, all at once (shutdown has little time)."""
        async with anyio.create_task_group() as group:
            while self._ready:
                group.start_soon(self._discard, self._ready.popleft())
