"""Sandbox placement and bookkeeping: records in the store, containers on the driver.

A sandbox's record is written before its container is created, and marked
destroyed only after the container is gone. So every container carrying this
store's label either has a live record or is a stray, and the reaper can
remove strays without ever racing a sandbox that is being born.

A session sandbox pays for its life on a lease (``scheduler.leases``), opened
in its record's transaction: created only if the budget covers the first
lease, stopped (destroyed: a sandbox's state is its memory) when a renewal
cannot be covered. A one-task sandbox (``sandbox_run``) is paid by its task,
whose hold covers its worst case. A sandbox whose container died is marked
``failed`` with the reason, and billed up to the moment it died.

A sandbox enforces its own end (``AgentRequest.idle_s``): handed over with
its ttl_s, it exits after that long idle whether or not any server is alive,
and a server that starts later reconciles it as ``destroyed`` (idle_ttl),
billed to the moment it ended.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskGroup
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.errors import CloudSkillsError, InvalidInput, NotFound
from sandbox.driver import (
    LABEL_SANDBOX,
    LABEL_STORE,
    LABEL_TENANT,
    AgentRequest,
    AgentResponse,
    Limits,
    OutputSink,
    SandboxDriver,
    SandboxSpec,
    VolumeMount,
)
from sandbox.templates import Template
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.observe import Sample
from scheduler.pricing import Usage
from scheduler.store import Store
from scheduler.tasks import new_id
from scheduler.workers import Workers
from skills.sandbox.pausing import PausePolicy, Pausing, paused_message
from skills.sandbox.pool import WarmPool
from skills.sandbox.records import (
    KIND,
    LIVE_STATES,
    PAUSED_STATES,
    QUOTA,
    SandboxRecord,
    billable,
    check_limits,
    ended_because,
    lifetime_usage,
    per_second,
    reap_view,
    row_limits,
)
from skills.sandbox.rows import Sandbox
from skills.sandbox.strays import remove_strays

log = logging.getLogger("cloudskills.sandboxes")


class SandboxManager:
    kind = KIND

    def __init__(
        self,
        store: Store,
        driver: SandboxDriver,
        leases: Leases,
        images: Mapping[str, str],
        pool: WarmPool | None = None,
        pause_policy: PausePolicy | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.leases = leases
        self.images = images  # image name (a template's) -> the tag to start
        self.pool = pool
        self.pausing = Pausing(self, pause_policy or PausePolicy())
        self.workers: Workers | None = None  # the replicas sharing the store, where the process has them
        self.background: TaskGroup | None = None  # where removals run, while the process serves
        # Containers being removed, each counted once per removal under way (two may overlap).
        self.removing: Counter[str] = Counter()

    def billable(self, usage: Usage) -> Usage:
        """The usage, less the disk meter where the price catalog has none (``records.billable``)."""
        return billable(self.leases.catalog, usage)

    async def serve(self) -> None:
        """While the process serves: keep the warm pool full, and remove destroyed
        sandboxes' containers off the callers' path. On the way out the pool is
        drained and pending removals finish."""
        try:
            async with anyio.create_task_group() as removals:
                self.background = removals
                if self.pool is not None:
                    await self.pool.run()
                else:
                    await anyio.sleep_forever()
        finally:
            self.background = None

    async def recover(self) -> list[str]:
        return []  # a sandbox outlives a restart; the reaper judges it

    async def stop_for_budget(self, resource_id: str) -> None:
        await self.destroy(resource_id, "budget", wait=False)

    def samples(self) -> Iterable[Sample]:
        """The warm pool's readings, for the process's metrics (``scheduler.observe.Reports``)."""
        return self.pool.samples() if self.pool is not None else ()

    async def create(
        self,
        tenant_id: str,
        template: Template,
        limits: Limits,
        ttl_s: int,
        task_id: str | None,
        volumes: tuple[VolumeMount, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SandboxRecord:
        """A running sandbox for the tenant: warm from the pool when it fits, else started cold
        (always, with volumes: a container's mounts are fixed when it is made)."""
        check_limits(limits)
        row = Sandbox(
            tenant_id=tenant_id,
            task_id=task_id,
            template=template.name,
            image=self.images.get(template.image, template.image),  # a custom template's is its tag
            vcpus=limits.vcpus,
            memory_mib=limits.memory_mib,
            disk_mib=limits.disk_mib,
            ttl_s=ttl_s,
        )
        shape = self.pool.shape_for(template.name, limits) if self.pool and not volumes else None
        warm = await self.pool.claim(shape) if self.pool and shape else None
        if warm is not None:
            assert self.pool is not None
            row.id, row.container_id, row.state = warm.sandbox_id, warm.handle.container_id, "running"
            try:
                with self.store.transaction() as session:
                    self._admit(session, row)
                    record = SandboxRecord.of(row)
            except Exception:
                # Refused (quota, budget) or not recorded: unused, it is as good as before.
                self.pool.give_back(warm)
                raise
            self.pool.handed_over(warm.sandbox_id)
        else:
            record = await self._start_cold(row, template, limits, volumes, env or {})
        if task_id is None:
            await self._hand_over(record)
        return record

    def _admit(self, session: Session, row: Sandbox) -> None:
        """The tenant's quota and budget checks, then the record and its lease, in one
        transaction: the tenant's row, locked by the check, keeps two creates from both
        passing it, and a sandbox_run's path has a round trip fewer."""
        QUOTA.check(session, row.tenant_id)
        if row.task_id is None:  # refused here, before any container, if the budget is short
            self.leases.check(
                session,
                row.tenant_id,
                KIND,
                self.billable(per_second(row_limits(row))),
                ask_less="a smaller sandbox: vcpus, memory_mib",
            )
        session.add(row)
        self._open_lease(session, row)

    async def _hand_over(self, record: SandboxRecord) -> None:
        """From now on the session sandbox ends by itself after ttl_s idle, server or not.
        (A one-task sandbox is handed over by its task's first request.)"""
        try:
            await self.call(record, AgentRequest(idle_s=await self.pausing.idle_limit(record)), 10.0)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.destroy(record.id, "failed_to_start")
            raise

    async def _start_cold(
        self,
        row: Sandbox,
        template: Template,
        limits: Limits,
        volumes: tuple[VolumeMount, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SandboxRecord:
        sandbox_id = row.id = new_id("sb")
        with self.store.transaction() as session:
            self._admit(session, row)  # the record first: its container is never a stray
        spec = SandboxSpec(
            image=row.image,
            limits=limits,
            runtime=template.runtime,
            labels={LABEL_STORE: self.store.store_id, LABEL_SANDBOX: sandbox_id, LABEL_TENANT: row.tenant_id},
            volumes=volumes,
            env=env or {},
        )
        try:
            handle = await anyio.to_thread.run_sync(self.driver.create, spec)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._mark_ended(sandbox_id, "destroyed", "failed_to_start", bill=False)
            raise
        with self.store.transaction() as session:
            started = session.get(Sandbox, sandbox_id)
            assert started is not None
            started.container_id = handle.container_id
            started.state = "running"
            return SandboxRecord.of(started)

    def _open_lease(self, session: Session, row: Sandbox) -> None:
        if row.task_id is None:
            per_s = self.billable(per_second(row_limits(row)))
            self.leases.open(
                session, kind=KIND, resource_id=row.id, tenant_id=row.tenant_id, op="lifetime", per_s=per_s
            )

    def get(self, tenant_id: str, sandbox_id: str, paused_ok: bool = False) -> SandboxRecord:
        """A live sandbox of this tenant; another tenant's looks exactly like a missing one.
        A paused one only for ``paused_ok`` (describe, pause, resume, destroy: no use of it,
        so they leave its idle clock alone); nothing runs in it."""
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            if row is None or row.tenant_id != tenant_id or row.task_id is not None:
                raise NotFound(f"no sandbox {sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
            if row.state not in LIVE_STATES:
                raise NotFound(f"sandbox {sandbox_id!r} {ended_because(row)}: create a new one with sandbox_create.")
            if row.state in PAUSED_STATES and not paused_ok:
                raise InvalidInput(paused_message(row))
            if not paused_ok:
                row.last_used_at = utcnow()
            return SandboxRecord.of(row)

    def _used_at(self, sandbox_id: str, when: datetime) -> None:
        with self.store.transaction() as session:
            session.execute(update(Sandbox).where(Sandbox.id == sandbox_id).values(last_used_at=when))

    def row(self, sandbox_id: str) -> Sandbox:
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            assert row is not None
            return row

    def owns(self, tenant_id: str, sandbox_id: str) -> bool:
        """Whether this tenant has (or had) this session sandbox."""
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            return row is not None and row.tenant_id == tenant_id and row.task_id is None

    def list_live(self, tenant_id: str) -> list[Sandbox]:
        with self.store.transaction() as session:
            rows = session.scalars(
                select(Sandbox)
                .where(Sandbox.tenant_id == tenant_id, Sandbox.task_id.is_(None), Sandbox.state.in_(LIVE_STATES))
                .order_by(Sandbox.created_at)
            )
            return list(rows)

    async def call(
        self, record: SandboxRecord, request: AgentRequest, deadline_s: float, on_output: OutputSink | None = None
    ) -> AgentResponse:
        # abandon_on_cancel: on a deadline or cancel the caller moves on at once;
        # destroying the container then breaks the blocked call's socket.
        # A call that may outlast the sandbox's ttl_s keeps it in use until its deadline (any
        # replica's reaper reads that), and its end starts the idle clock.
        long_call = record.task_id is None and deadline_s >= record.ttl_s
        if long_call:
            self._used_at(record.id, utcnow() + timedelta(seconds=deadline_s))
        try:
            response = await anyio.to_thread.run_sync(
                self.driver.call, record.handle, request, deadline_s, on_output, abandon_on_cancel=True
            )
            if long_call:
                self._used_at(record.id, utcnow())
            return response
        except NotFound:
            # It stopped answering: if its container died, the books say so from now on.
            if record.task_id is None and record.container_id is not None:
                await self.mark_dead(record.id, record.container_id)
                paused = self.row(record.id)
                if paused.state in PAUSED_STATES:
                    raise InvalidInput(f"{paused_message(paused)} (it was paused while this call ran)") from None
            raise

    async def destroy(self, sandbox_id: str, reason: str, wait: bool = True) -> Usage:
        """End a sandbox: its record is marked destroyed (its lifetime ends now), its
        lease closed (a session sandbox's last interval billed), and its container
        removed; return the lifetime's usage, which a one-task sandbox's task bills.

        ``wait=False`` removes the container in the background, off the caller's
        path; if the process dies first, the container is a stray the reaper removes."""
        # The read and the end in one transaction: a round trip fewer on every sandbox_run.
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            container_id = row.container_id if row is not None and row.state in LIVE_STATES else None
            usage = self._end(session, row, "destroyed", reason)
        if container_id is not None:
            self.removing[container_id] += 1  # from now on the reaper knows it for ours, not a stray
            if wait or self.background is None:
                await self._remove(container_id)
            else:
                self.background.start_soon(self._remove_quietly, container_id)
        return usage

    async def _remove(self, container_id: str) -> None:
        """Remove an ended sandbox's container, which the caller counted in ``removing``.
        Shielded: once its record says it ended, a caller cancelled on the way (a server
        shutting down) does not leave it behind."""
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.driver.destroy, container_id)
        finally:
            self.removing[container_id] -= 1
            if self.removing[container_id] <= 0:
                del self.removing[container_id]

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self._remove(container_id)
        except CloudSkillsError as exc:
            log.warning("could not remove container %s (the reaper will retry): %s", container_id[:12], exc)

    async def _mark_ended(
        self, sandbox_id: str, state: str, reason: str, at: datetime | None = None, bill: bool = True
    ) -> Usage:
        """End the record at ``at`` (now); ``bill=False`` for a sandbox that never ran."""
        with self.store.transaction() as session:
            return self._end(session, session.get(Sandbox, sandbox_id), state, reason, at, bill)

    def _end(
        self,
        session: Session,
        row: Sandbox | None,
        state: str,
        reason: str,
        at: datetime | None = None,
        bill: bool = True,
    ) -> Usage:
        if row is None or row.state not in LIVE_STATES:
            return Usage()
        row.state, row.destroy_reason = state, reason
        end = at or utcnow() if bill else row.created_at
        row.destroyed_at = max(min(end, utcnow()), row.created_at)
        if row.task_id is None:  # only a session sandbox has a lease (``_open_lease``); its task pays for the other
            self.leases.close(session, row.id, reason, row.destroyed_at)
        return self.billable(lifetime_usage(row))

    async def reap(self) -> list[str]:
        """Reconcile session sandboxes that ended by themselves (expired, or died: billed to
        that moment), destroy expired and orphaned ones, and remove stray containers and
        what a killed process left half set up."""
        now = utcnow()
        with self.store.transaction() as session:
            live = reap_view(session)
        containers = await anyio.to_thread.run_sync(self.driver.list_labelled, {LABEL_STORE: self.store.store_id})
        running = {c.container_id for c in containers if c.running}
        reaped: list[str] = []
        for sandbox_id, task_id, last_used_at, ttl_s, container_id, task_state, state, paused_at in live:
            if state in PAUSED_STATES:
                await self.pausing.reap(sandbox_id, state, paused_at, container_id in running, reaped)
            # An ended container first: it is billed to the moment it ended, not to now.
            elif task_id is None and container_id and container_id not in running and container_id not in self.removing:
                if await self.mark_dead(sandbox_id, container_id) is not None:
                    reaped.append(sandbox_id)
            elif task_id is None and last_used_at + timedelta(seconds=ttl_s) < now:
                if not await self.pausing.pause_idle(sandbox_id, reaped):
                    await self._reap_one(sandbox_id, "idle_ttl", reaped)
            elif task_id is not None and task_state != "running":
                # Its task ended (or died with a previous process) without cleaning up.
                await self._reap_one(sandbox_id, "task_ended", reaped)
        reaped += await remove_strays(self, containers)
        reaped += await anyio.to_thread.run_sync(self.driver.sweep)
        return reaped

    async def mark_dead(self, sandbox_id: str, container_id: str) -> str | None:
        """A sandbox whose container stopped on its own: ``destroyed`` (idle_ttl) if it
        expired, else ``failed``; billed up to the moment it ended, its container removed;
        the reason, or None if it still runs."""
        ended = await anyio.to_thread.run_sync(self.driver.exit_of, container_id)
        if ended is None or self.row(sandbox_id).state in PAUSED_STATES:
            return None  # running, or stopped by a pause (its checkpoint holds it)
        if ended.expired:
            log.info("sandbox %s expired by itself at %s", sandbox_id, ended.finished_at.isoformat())
            await self._mark_ended(sandbox_id, "destroyed", "idle_ttl", ended.finished_at)
        else:
            log.warning("sandbox %s died: %s", sandbox_id, ended.reason)
            await self._mark_ended(sandbox_id, "failed", f"died: {ended.reason}", ended.finished_at)
        self.removing[container_id] += 1
        await self._remove_quietly(container_id)
        return ended.reason

    async def _reap_one(self, sandbox_id: str, reason: str, reaped: list[str]) -> None:
        try:
            await self.destroy(sandbox_id, reason)
            reaped.append(sandbox_id)
        except CloudSkillsError as exc:
            log.warning("could not reap sandbox %s: %s", sandbox_id, exc)
