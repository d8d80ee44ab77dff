"""A warm pool: sandboxes started ahead of need, handed out in a millisecond.

The pool keeps sandboxes of every built-in template's shape running and
attached, their agent and Python interpreter already up, as many of each as
its use calls for: its size is shared out between the shapes by their recent
claims (decaying with a half-life, ``share_out``), the defaults of
``sandbox_run`` and ``sandbox_create`` sharing it until any claim is seen,
and never past a host memory budget. A claim takes one, checks it answers
(never a dead one), and wakes the refill loop, which starts a replacement
once claims pause, or at once when the pool runs low: not while the claimer's
call shares the CPU with it. The pool is drained when the server stops.

A warm sandbox is *held* (``SandboxSpec.hold_s``): it ends by itself as soon
as this process lets go of it, however the process ended, or when the pool's
heartbeat stops coming. So a killed server leaves no warm sandbox running; the
next reaper removes the stopped containers. Pooled sandboxes carry this
store's label and an id the pool holds, so the reaper leaves them alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from common.errors import CloudSkillsError
from sandbox.driver import LABEL_POOL as LABEL_POOL  # re-exported: the label of a warm sandbox
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, LABEL_WORKER, Limits, SandboxDriver, SandboxHandle, SandboxSpec
from scheduler.observe import Sample
from scheduler.tasks import new_id

log = logging.getLogger("cloudskills.pool")

# After a failed start, wait before trying again (the engine may be down).
RETRY_AFTER_FAILURE_S = 5.0
# A warm sandbox ends after HOLD_S without a heartbeat; one comes every HEARTBEAT_S.
HOLD_S = 10.0
HEARTBEAT_S = 3.0
# A claim's weight in sharing out the pool halves every DEMAND_HALF_LIFE_S; the default
# templates keep a little weight (PRIOR) so that they stay warm until others are used more.
DEMAND_HALF_LIFE_S = 600.0
PRIOR = 0.5
# A replacement waits for claims to pause this long while the shape has more than
# REFILL_LOW ready: starting a container takes the host's CPU for a few hundred ms,
# which the claimer's call (in the sandbox it just took) would otherwise share.
REFILL_PAUSE_S = 0.3
REFILL_LOW = 1
# What the pool counts per template (see ``samples``), and what each count means.
COUNTED = {
    "claimed": "Warm sandboxes handed out.",
    "missed": "Claims that found the pool empty (the sandbox started cold).",
    "dead": "Warm sandboxes found dead and replaced.",
    "refills": "Warm sandboxes started to refill the pool.",
    "refill_seconds": "Seconds the refills took, in all (divide by pool_refills for the mean).",
}


@dataclass(frozen=True)
class Shape:
    """What a warm sandbox is: a template's image, limits and runtime."""

    template: str
    image: str
    limits: Limits = field(default_factory=Limits)
    runtime: str | None = None


@dataclass(frozen=True)
class WarmSandbox:
    sandbox_id: str
    handle: SandboxHandle
    shape: Shape


class WarmPool:
    def __init__(
        self,
        driver: SandboxDriver,
        store_id: str,
        shapes: Sequence[Shape],
        size: int,
        memory_budget_mib: int,
        drain_s: float | None = None,
        others: Sequence[Shape] = (),
        worker_id: str = "",
    ) -> None:
        """``shapes`` share the pool from the start; ``others`` get a share once claimed."""
        self.driver = driver
        self.store_id = store_id
        self.worker_id = worker_id  # this server process among the replicas (its warm ones carry it)
        self.drain_s = drain_s  # at shutdown, how long to wait for the removals (None: all)
        self.capacity = size
        self.memory_budget_mib = memory_budget_mib
        self.prior = {shape: PRIOR for shape in dict.fromkeys(shapes)}
        every = list(dict.fromkeys([*shapes, *others]))
        self._demand: dict[Shape, float] = dict.fromkeys(every, 0.0)
        self._demand_at = time.monotonic()
        self.targets: dict[Shape, int] = share_out(size, memory_budget_mib, every, self.prior)
        self._ready: dict[Shape, deque[WarmSandbox]] = {shape: deque() for shape in self.targets}
        self._starting: dict[Shape, set[str]] = {shape: set() for shape in self.targets}
        # Ids claimed but not yet recorded by the claimer: not strays either.
        self._claiming: set[str] = set()
        # Ids the engine was making when a bounded stop stopped waiting for them.
        self._abandoned: set[str] = set()
        self._wanted = {shape: anyio.Event() for shape in self.targets}
        self._claimed_at = dict.fromkeys(self.targets, 0.0)  # monotonic time of each shape's last claim
        self._trimming: TaskGroup | None = None
        self.stats = {"claimed": 0, "missed": 0, "dead": 0}
        # The same by template, with the refills and the seconds they took (the process's metrics).
        self.counts = {shape.template: dict.fromkeys(COUNTED, 0.0) for shape in self.targets}

    @property
    def size(self) -> int:
        return sum(self.targets.values())

    def shape_for(self, template: str, limits: Limits) -> Shape | None:
        """The shape a sandbox of this template and limits would take from the pool, if any."""
        for shape in self.targets:
            if shape.template == template and shape.limits == limits:
                return shape
        return None

    def warmth(self, template: str) -> tuple[int, int]:
        """How many sandboxes of this template the pool keeps, and how many are ready now."""
        shapes = [shape for shape in self.targets if shape.template == template]
        return sum(self.targets[s] for s in shapes), sum(len(self._ready[s]) for s in shapes)

    def _note_demand(self, shape: Shape) -> None:
        """Count a claim, and share the pool out again by the claims seen (decayed)."""
        now = time.monotonic()
        decay = math.pow(0.5, (now - self._demand_at) / DEMAND_HALF_LIFE_S)
        self._demand = {s: d * decay for s, d in self._demand.items()}
        self._demand_at = now
        self._demand[shape] += 1.0
        weights = {s: d + self.prior.get(s, 0.0) for s, d in self._demand.items()}
        targets = share_out(self.capacity, self.memory_budget_mib, list(self.targets), weights)
        for s, target in targets.items():
            if target > self.targets[s]:
                self._wanted[s].set()
            self.targets[s] = target
            ready = self._ready[s]
            while len(ready) > target and self._trimming is not None:
                self._trimming.start_soon(self._discard, ready.pop())

    def holds(self, sandbox_id: str) -> bool:
        """Whether the pool owns this sandbox (ready, starting, or being claimed)."""
        if sandbox_id in self._claiming or any(sandbox_id in ids for ids in self._starting.values()):
            return True
        return any(w.sandbox_id == sandbox_id for ready in self._ready.values() for w in ready)

    @property
    def ready(self) -> int:
        return sum(len(ready) for ready in self._ready.values())

    async def claim(self, shape: Shape) -> WarmSandbox | None:
        """A live warm sandbox, or None when the pool is empty (the caller starts one cold).

        The pool keeps holding the sandbox it returns (the reaper leaves it alone)
        until the caller, having written its record, calls ``handed_over``."""
        self._note_demand(shape)
        self._claimed_at[shape] = time.monotonic()
        self._wanted[shape].set()
        ready = self._ready[shape]
        # Several engines (sandbox/engines.py): the warm one on the engine with the most room first.
        draining, room_of = getattr(self.driver, "is_draining", None), getattr(self.driver, "room_of", None)
        if room_of is not None and len(ready) > 1:
            ready = self._ready[shape] = deque(sorted(ready, key=lambda w: -room_of(w.handle.container_id)))
        while ready:
            warm = ready.popleft()
            if draining is not None and draining(warm.handle.container_id):
                await self._discard(warm)  # its engine takes nothing new: a warm one there neither
                continue
            self._claiming.add(warm.sandbox_id)
            try:
                alive = await anyio.to_thread.run_sync(self.driver.ping, warm.handle)
            except BaseException:
                # The claimer was cancelled (its client went away): the warm one goes back
                # untouched, not left claimed by nobody until the process ends.
                self.give_back(warm)
                raise
            if alive:
                self._count(shape, "claimed")
                return warm
            self._claiming.discard(warm.sandbox_id)
            self._count(shape, "dead")
            await self._discard(warm)
        self._count(shape, "missed")
        return None

    def _count(self, shape: Shape, what: str, seconds: float = 0.0) -> None:
        if what in self.stats:
            self.stats[what] += 1
        counts = self.counts[shape.template]
        counts[what] += 1
        counts["refill_seconds"] += seconds

    def samples(self) -> Iterator[Sample]:
        """The pool by template, for the process's metrics (``scheduler.observe.Reports``)."""
        for shape, target in self.targets.items():
            labels = {"template": shape.template}
            yield Sample("pool_target", "gauge", "Warm sandboxes the pool keeps.", target, labels)
            yield Sample("pool_ready", "gauge", "Warm sandboxes ready now.", len(self._ready[shape]), labels)
            yield Sample("pool_starting", "gauge", "Warm sandboxes being started.", len(self._starting[shape]), labels)
        for template, counts in self.counts.items():
            for what, help_ in COUNTED.items():
                yield Sample(f"pool_{what}", "counter", help_, counts[what], {"template": template})

    def handed_over(self, sandbox_id: str) -> None:
        self._claiming.discard(sandbox_id)

    def give_back(self, warm: WarmSandbox) -> None:
        """A claimed sandbox its claimer did not use (refused before any request): ready again."""
        self._claiming.discard(warm.sandbox_id)
        self._ready[warm.shape].appendleft(warm)

    async def run(self) -> None:
        """Keep the pool full and its sandboxes held until cancelled; then drain it."""
        try:
            async with anyio.create_task_group() as group:
                self._trimming = group
                for shape in self.targets:
                    group.start_soon(self._keep_full, shape)
                group.start_soon(self._heartbeat)
        finally:
            self._trimming = None
            with anyio.CancelScope(shield=True):
                await self.drain()

    async def _keep_full(self, shape: Shape) -> None:
        while True:
            if len(self._ready[shape]) + len(self._starting[shape]) < self.targets[shape]:
                pause = self._claimed_at[shape] + REFILL_PAUSE_S - time.monotonic()
                if len(self._ready[shape]) > REFILL_LOW and pause > 0:
                    await anyio.sleep(pause)
                    continue
                begun = time.monotonic()
                warm = await self._start_one(shape)
                if warm is None:
                    await anyio.sleep(RETRY_AFTER_FAILURE_S)
                else:
                    self._ready[shape].append(warm)
                    self._count(shape, "refills", time.monotonic() - begun)
                continue
            self._wanted[shape] = anyio.Event()
            await self._wanted[shape].wait()

    async def _heartbeat(self) -> None:
        """Ping every ready sandbox now and then: a held sandbox ends without it; one
        that no longer answers is replaced."""
        while True:
            await anyio.sleep(HEARTBEAT_S)
            async with anyio.create_task_group() as group:
                for ready in self._ready.values():
                    for warm in list(ready):
                        group.start_soon(self._beat, warm)

    async def _beat(self, warm: WarmSandbox) -> None:
        if await anyio.to_thread.run_sync(self.driver.ping, warm.handle):
            return
        ready = self._ready[warm.shape]
        if warm in ready:  # not claimed meanwhile
            ready.remove(warm)
            self._count(warm.shape, "dead")
            self._wanted[warm.shape].set()
            await self._discard(warm)

    async def _start_one(self, shape: Shape) -> WarmSandbox | None:
        sandbox_id = new_id("sb")
        self._starting[shape].add(sandbox_id)
        try:
            return await self._create(sandbox_id, shape)
        finally:
            self._starting[shape].discard(sandbox_id)

    async def _create(self, sandbox_id: str, shape: Shape) -> WarmSandbox | None:
        spec = SandboxSpec(
            image=shape.image,
            limits=shape.limits,
            runtime=shape.runtime,
            labels={
                LABEL_STORE: self.store_id,
                LABEL_SANDBOX: sandbox_id,
                LABEL_POOL: "1",
                LABEL_WORKER: self.worker_id,
            },
            hold_s=HOLD_S,
        )
        try:
            # Shielded unless the stop is bounded (drain_s): a container being made when the
            # server stops is then made whole and removed. A bounded stop moves on; what the
            # engine goes on to make ends by itself, or is swept if never started.
            try:
                with anyio.CancelScope(shield=self.drain_s is None):
                    handle = await anyio.to_thread.run_sync(self.driver.create, spec, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                self._abandoned.add(sandbox_id)  # the engine goes on: see drain
                raise
            try:
                # Up means answering: the agent and its interpreter have started. Not
                # shielded: a stop does not wait for that, it removes the sandbox.
                ready = await anyio.to_thread.run_sync(self.driver.ping, handle, 20.0, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._discard(WarmSandbox(sandbox_id, handle, shape))
                raise
            if not ready:
                await anyio.to_thread.run_sync(self.driver.destroy, handle.container_id)
                return None
        except CloudSkillsError as exc:
            log.warning("warm pool: could not start a sandbox: %s", exc)
            return None
        except Exception:
            # The pool is an optimisation: a failure here must not take the server down.
            log.exception("warm pool: starting a sandbox failed")
            return None
        return WarmSandbox(sandbox_id, handle, shape)

    async def _discard(self, warm: WarmSandbox) -> None:
        try:
            # abandon_on_cancel: a drain past drain_s moves on (see drain).
            await anyio.to_thread.run_sync(self.driver.destroy, warm.handle.container_id, abandon_on_cancel=True)
        except CloudSkillsError as exc:
            log.warning("warm pool: could not remove a dead sandbox: %s", exc)

    async def drain(self) -> None:
        """Remove every warm sandbox, all at once (shutdown has little time), waiting at most
        ``drain_s``: each ends as soon as this process lets go of it, the engine completes a
        removal it has begun, and any server's reaper removes what is left (``sweep``)."""
        with anyio.move_on_after(self.drain_s if self.drain_s is not None else float("inf")):
            async with anyio.create_task_group() as group:
                for ready in self._ready.values():
                    while ready:
                        group.start_soon(self._discard, ready.popleft())
        # What the engine was still making when a bounded stop gave up on it: a process that
        # outlives this one removes it once made (nothing else would, with no server left).
        if self._abandoned:
            self.driver.abandon([f"{LABEL_SANDBOX}={sandbox_id}" for sandbox_id in sorted(self._abandoned)])
            self._abandoned.clear()


def share_out(size: int, budget_mib: int, shapes: Sequence[Shape], weights: Mapping[Shape, float]) -> dict[Shape, int]:
    """``size`` warm sandboxes shared between ``shapes`` in proportion to their weights,
    one at a time to the shape whose share is furthest behind (D'Hondt), each only while
    its memory still fits in ``budget_mib``; a shape without weight gets none."""
    targets = dict.fromkeys(shapes, 0)
    for _ in range(size):
        fits = [s for s in shapes if weights.get(s, 0.0) > 0 and s.limits.memory_mib <= budget_mib]
        if not fits:
            break
        best = max(fits, key=lambda s: weights[s] / (targets[s] + 1))
        targets[best] += 1
        budget_mib -= best.limits.memory_mib
    return targets
