"""Sandbox placement and bookkeeping: records in the store, containers on the driver.

A sandbox's record is written before its container is created, and marked
destroyed only after the container is gone. So every container carrying this
store's label either has a live record or is a stray, and the reaper can
remove strays without ever racing a sandbox that is being born.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import anyio
from anyio.abc import TaskGroup
from sqlalchemy import select

from sandbox.driver import (
    LABEL_SANDBOX,
    LABEL_STORE,
    LABEL_TENANT,
    AgentRequest,
    AgentResponse,
    Limits,
    SandboxDriver,
    SandboxHandle,
    SandboxSpec,
)
from sandbox.templates import MAX_LIMITS, TEMPLATES, Template
from scheduler import ledger, quotas
from scheduler.errors import CloudSkillsError, InvalidInput, NotFound
from scheduler.models import Sandbox, Task, utcnow
from scheduler.pool import WarmPool
from scheduler.pricing import PriceCatalog, Usage
from scheduler.store import Store
from scheduler.tasks import new_id

log = logging.getLogger("cloudskills.sandboxes")

LIVE_STATES = ("starting", "running")


@dataclass(frozen=True)
class SandboxRecord:
    """A snapshot of a sandbox's row, safe to use outside its transaction."""

    id: str
    tenant_id: str
    task_id: str | None
    template: str
    container_id: str | None
    state: str
    vcpus: float
    memory_mib: int
    ttl_s: int

    @classmethod
    def of(cls, row: Sandbox) -> SandboxRecord:
        return cls(
            row.id,
            row.tenant_id,
            row.task_id,
            row.template,
            row.container_id,
            row.state,
            row.vcpus,
            row.memory_mib,
            row.ttl_s,
        )

    @property
    def handle(self) -> SandboxHandle:
        assert self.container_id is not None
        return SandboxHandle(container_id=self.container_id, name=f"cloudskills-{self.id}")


def lifetime_usage(row: Sandbox) -> Usage:
    end = row.destroyed_at or utcnow()
    ms = max(int((end - row.created_at) / timedelta(milliseconds=1)), 0)
    return Usage.sandbox_for(row.vcpus, row.memory_mib, ms)


def resolve_template(name: str) -> Template:
    template = TEMPLATES.get(name)
    if template is None:
        raise InvalidInput(f"unknown template {name!r}: use one of {', '.join(sorted(TEMPLATES))}.")
    return template


def check_limits(limits: Limits) -> Limits:
    for field in ("vcpus", "memory_mib", "pids", "disk_mib"):
        value, most = getattr(limits, field), getattr(MAX_LIMITS, field)
        if not 0 < value <= most:
            raise InvalidInput(f"{field} must be above 0 and at most {most:g}; you asked for {value:g}.")
    return limits


class SandboxManager:
    def __init__(
        self, store: Store, driver: SandboxDriver, catalog: PriceCatalog, image: str, pool: WarmPool | None = None
    ) -> None:
        self.store = store
        self.driver = driver
        self.catalog = catalog
        self.image = image
        self.pool = pool
        # Where background container removals run (set while the app runs).
        self.background: TaskGroup | None = None
        self._removing: set[str] = set()

    async def create(
        self,
        tenant_id: str,
        template: Template,
        limits: Limits,
        ttl_s: int,
        task_id: str | None,
    ) -> SandboxRecord:
        """A running sandbox for the tenant: warm from the pool when it fits, else started cold."""
        check_limits(limits)
        with self.store.transaction() as session:
            quotas.check_sandboxes(session, ledger.locked_tenant(session, tenant_id))
        row = Sandbox(
            tenant_id=tenant_id,
            task_id=task_id,
            template=template.name,
            image=self.image,
            vcpus=limits.vcpus,
            memory_mib=limits.memory_mib,
            ttl_s=ttl_s,
        )
        warm = await self.pool.claim() if self.pool and self.pool.fits(limits, template.runtime) else None
        if warm is not None:
            assert self.pool is not None
            row.id, row.container_id, row.state = warm.sandbox_id, warm.handle.container_id, "running"
            try:
                with self.store.transaction() as session:
                    session.add(row)
                    return SandboxRecord.of(row)
            finally:
                # Recorded (or failed): either way the pool's hold ends; without a
                # record the reaper removes it.
                self.pool.handed_over(warm.sandbox_id)
        return await self._start_cold(row, template, limits)

    async def _start_cold(self, row: Sandbox, template: Template, limits: Limits) -> SandboxRecord:
        sandbox_id = row.id = new_id("sb")
        with self.store.transaction() as session:
            session.add(row)  # the record first: its container is never a stray
        spec = SandboxSpec(
            image=self.image,
            limits=limits,
            runtime=template.runtime,
            labels={LABEL_STORE: self.store.store_id, LABEL_SANDBOX: sandbox_id, LABEL_TENANT: row.tenant_id},
        )
        try:
            handle = await anyio.to_thread.run_sync(self.driver.create, spec)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._mark_destroyed(sandbox_id, "failed_to_start", bill=False)
            raise
        with self.store.transaction() as session:
            started = session.get(Sandbox, sandbox_id)
            assert started is not None
            started.container_id = handle.container_id
            started.state = "running"
            return SandboxRecord.of(started)

    def get(self, tenant_id: str, sandbox_id: str) -> SandboxRecord:
        """A live sandbox of this tenant; another tenant's looks exactly like a missing one."""
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            if row is None or row.tenant_id != tenant_id or row.task_id is not None:
                raise NotFound(f"no sandbox {sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
            if row.state not in LIVE_STATES:
                raise NotFound(
                    f"sandbox {sandbox_id!r} was destroyed ({row.destroy_reason}): "
                    "create a new one with sandbox_create."
                )
            row.last_used_at = utcnow()
            return SandboxRecord.of(row)

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

    async def call(self, record: SandboxRecord, request: AgentRequest, deadline_s: float) -> AgentResponse:
        # abandon_on_cancel: on a deadline or cancel the caller moves on at once;
        # destroying the container then breaks the blocked call's socket.
        return await anyio.to_thread.run_sync(
            self.driver.call, record.handle, request, deadline_s, abandon_on_cancel=True
        )

    async def destroy(self, sandbox_id: str, reason: str, bill: bool, wait: bool = True) -> Usage:
        """End a sandbox: its record is marked destroyed (its lifetime ends now) and its
        container removed; return the lifetime's usage.

        ``bill`` charges a session sandbox's lifetime to its tenant in the ledger
        (once: the entry's key is the sandbox's id). A one-task sandbox's
        lifetime is billed by its task instead, from the usage returned.
        ``wait=False`` removes the container in the background, off the caller's
        path; if the process dies first, the container is a stray the reaper removes."""
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            container_id = row.container_id if row is not None and row.state in LIVE_STATES else None
        usage = await self._mark_destroyed(sandbox_id, reason, bill)
        if container_id is not None:
            if wait or self.background is None:
                await anyio.to_thread.run_sync(self.driver.destroy, container_id)
            else:
                self.background.start_soon(self._remove_quietly, container_id)
        return usage

    async def _remove_quietly(self, container_id: str) -> None:
        self._removing.add(container_id)
        try:
            await anyio.to_thread.run_sync(self.driver.destroy, container_id)
        except CloudSkillsError as exc:
            log.warning("could not remove container %s (the reaper will retry): %s", container_id[:12], exc)
        finally:
            self._removing.discard(container_id)

    async def _mark_destroyed(self, sandbox_id: str, reason: str, bill: bool) -> Usage:
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            if row is None or row.state not in LIVE_STATES:
                return Usage()
            row.state = "destroyed"
            row.destroyed_at = utcnow()
            row.destroy_reason = reason
            usage = lifetime_usage(row)
            if bill:
                posting = ledger.Posting(f"sandbox:{row.id}:lifetime", row.tenant_id, None, "sandbox", "lifetime")
                ledger.post(session, self.catalog, posting, self.catalog.usage_charges(usage))
            return usage

    async def reap(self) -> list[str]:
        """Destroy expired session sandboxes, orphaned one-task sandboxes, and stray containers."""
        now = utcnow()
        with self.store.transaction() as session:
            live = session.execute(
                select(Sandbox.id, Sandbox.task_id, Sandbox.last_used_at, Sandbox.ttl_s, Task.state)
                .outerjoin(Task, Task.id == Sandbox.task_id)
                .where(Sandbox.state.in_(LIVE_STATES))
            ).all()
        reaped: list[str] = []
        for sandbox_id, task_id, last_used_at, ttl_s, task_state in live:
            if task_id is None and last_used_at + timedelta(seconds=ttl_s) < now:
                await self._reap_one(sandbox_id, "idle_ttl", bill=True, reaped=reaped)
            elif task_id is not None and task_state != "running":
                # Its task ended (or died with a previous process) without cleaning up.
                await self._reap_one(sandbox_id, "task_ended", bill=False, reaped=reaped)
        containers = await anyio.to_thread.run_sync(self.driver.list_labelled, {LABEL_STORE: self.store.store_id})
        for container in containers:
            # Judged one at a time, with no await between the judgement and the
            # removal's start: a sandbox the pool is handing over, or whose record
            # was written since the listing, is never taken for a stray.
            if self._owned(container.container_id, container.labels.get(LABEL_SANDBOX, "")):
                continue
            log.info("removing stray container %s", container.container_id[:12])
            await anyio.to_thread.run_sync(self.driver.destroy, container.container_id)
            reaped.append(container.container_id)
        return reaped

    def _owned(self, container_id: str, sandbox_id: str) -> bool:
        """Whether a container belongs to something: the pool, a removal under way, or a live record."""
        if container_id in self._removing or (self.pool is not None and self.pool.holds(sandbox_id)):
            return True
        with self.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            return row is not None and row.state in LIVE_STATES

    async def _reap_one(self, sandbox_id: str, reason: str, bill: bool, reaped: list[str]) -> None:
        try:
            await self.destroy(sandbox_id, reason, bill=bill)
            reaped.append(sandbox_id)
        except CloudSkillsError as exc:
            log.warning("could not reap sandbox %s: %s", sandbox_id, exc)
