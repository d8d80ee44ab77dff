"""Pausing a session sandbox to disk and resuming it, in the books and on the engine.

A pause is a real checkpoint (``sandbox/checkpoint.py``): the sandbox's
processes, their memory and open files go to disk, its container stops, and
its CPU and memory are free for others. While paused it pays for its disk and
its checkpoint's only (its lease is re-rated: ``scheduler.leases``), answers
nothing but describe, resume and destroy, and is destroyed after the server's
retention. A resume restores every process as it was, interpreter variables
included, and pays the running rate again (refused, and it stays paused, when
the budget cannot cover that lease).

The record leads: ``paused`` is written before the checkpoint (so no call
races it into a container that is stopping) and ``resuming`` before the
restore, and each is undone if the engine fails. A process killed in between
leaves a record the reaper settles from what the engine shows (``reap``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
from sqlalchemy.orm import Session

from common.errors import BackendUnavailable, BudgetExceeded, CloudSkillsError, InvalidInput, NotFound, TaskFailed
from sandbox.driver import AgentRequest
from scheduler.models import utcnow
from skills.sandbox.records import (
    LIVE_STATES,
    PAUSED_STATES,
    SandboxRecord,
    ended_because,
    paused_per_second,
    per_second,
    row_limits,
)
from skills.sandbox.rows import Sandbox

if TYPE_CHECKING:
    from skills.sandbox.manager import SandboxManager

log = logging.getLogger("cloudskills.sandboxes")

MIB = 1 << 20
# With idle pausing on, a pausable sandbox is handed over with this much more than its
# ttl_s, so that the reaper (every few seconds) pauses it before it ends by itself.
IDLE_PAUSE_GRACE_S = 60.0
# A sandbox marked paused whose container still runs may be mid-checkpoint in another
# process (a replica, or one killed meanwhile while the engine carries on: 512 MiB takes
# about 20 s here, the largest sandbox minutes). Only after this long is it taken for
# one never checkpointed and put back to running; until then a resume restores it.
CHECKPOINT_GRACE_S = 300.0


@dataclass(frozen=True)
class PausePolicy:
    """The operator's choices (``Settings.sandbox_idle_pause`` and ``sandbox_paused_retention_s``)."""

    idle_pause: bool = False  # an idle session sandbox is paused at its ttl_s, where it can be, not destroyed
    retention_s: float = 7 * 86400.0  # a paused sandbox is destroyed after this long


def paused_message(row: Sandbox) -> str:
    if row.state == "resuming":
        return f"sandbox {row.id!r} is being resumed: try again in a moment."
    since = row.paused_at.isoformat() if row.paused_at is not None else "a moment ago"
    return f"sandbox {row.id!r} is paused (since {since}): call sandbox_resume with its id, then try again."


class Pausing:
    def __init__(self, manager: SandboxManager, policy: PausePolicy) -> None:
        self.manager = manager
        self.policy = policy
        self._busy: set[str] = set()  # pauses and resumes under way in this process

    @contextlib.contextmanager
    def _one_at_a_time(self, sandbox_id: str) -> Iterator[None]:
        if sandbox_id in self._busy:
            raise InvalidInput(f"sandbox {sandbox_id!r} is being paused or resumed: try again in a moment.")
        self._busy.add(sandbox_id)
        try:
            yield
        finally:
            self._busy.discard(sandbox_id)

    def _now(self, record: SandboxRecord) -> SandboxRecord:
        """The record as it stands now: it may have been read before another pause, resume
        or destroy ran start to end (NotFound once it ended)."""
        return self.manager.get(record.tenant_id, record.id, paused_ok=True)

    async def problem(self, container_id: str) -> str | None:
        return await anyio.to_thread.run_sync(self.manager.driver.pause_problem, container_id)

    async def idle_limit(self, record: SandboxRecord) -> float:
        """How long a session sandbox may stay idle before it ends by itself: its ttl_s, and
        with idle pausing, a little more where it can pause (the reaper pauses it first)."""
        if not self.policy.idle_pause or record.container_id is None:
            return float(record.ttl_s)
        pausable = await self.problem(record.container_id) is None
        return record.ttl_s + IDLE_PAUSE_GRACE_S if pausable else float(record.ttl_s)

    # -- pause ------------------------------------------------------------------

    async def pause(self, record: SandboxRecord) -> Sandbox:
        """Checkpoint a running session sandbox to disk; one paused already is left so."""
        assert record.container_id is not None
        if self._now(record).state in PAUSED_STATES:
            return self.manager.row(record.id)
        problem = await self.problem(record.container_id)
        if problem is not None:
            raise BackendUnavailable(
                f"this sandbox cannot pause: {problem}. It runs on untouched: keep using it (it ends after its "
                "ttl_s idle), or save what you need to a workspace and destroy it."
            )
        with self._one_at_a_time(record.id):
            if self._now(record).state in PAUSED_STATES:  # again: asking the engine took a while
                return self.manager.row(record.id)
            self._set(record.id, "paused", estimate=True)
            try:
                size = await anyio.to_thread.run_sync(self.manager.driver.pause, record.container_id)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._back_to_running(record.id)
                raise
            return self._set(record.id, "paused", checkpoint_bytes=size)

    async def _back_to_running(self, sandbox_id: str) -> None:
        """Undo a pause the engine refused; a budget that no longer covers the running
        rate stops the sandbox, as a lease renewal would."""
        try:
            self._set(sandbox_id, "running")
        except CloudSkillsError as exc:
            log.warning("sandbox %s could not run on after a failed pause (%s): destroyed", sandbox_id, exc)
            await self.manager.destroy(sandbox_id, "budget")

    def _set(self, sandbox_id: str, state: str, estimate: bool = False, checkpoint_bytes: int = 0) -> Sandbox:
        """Move the record to ``state`` and its lease to that state's rate, in one transaction
        (a resume refused for money rolls back, and the sandbox stays paused)."""
        manager = self.manager
        with manager.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id, populate_existing=True)
            if row is None:
                raise NotFound(f"no sandbox {sandbox_id!r}: call sandbox_list to see yours.")
            if row.state not in LIVE_STATES:  # destroyed while the engine worked: it stays so, unbilled
                raise NotFound(f"sandbox {sandbox_id!r} {ended_because(row)}: create a new one with sandbox_create.")
            if state == "paused":
                if row.paused_at is None or estimate:
                    row.paused_at = utcnow()
                # Until the checkpoint is written its size is unknown: at most the memory limit.
                # Back to paused with no new checkpoint (a restore that failed or never ran),
                # the one it has is billed as measured.
                if estimate or not (checkpoint_bytes or row.checkpoint_mib):
                    row.checkpoint_mib = row.memory_mib
                elif checkpoint_bytes:
                    row.checkpoint_mib = -(-checkpoint_bytes // MIB)
                # A pause only lowers what the tenant spends: never refused for money.
                manager.leases.lower_rate(
                    session, kind=manager.kind, resource_id=row.id, tenant_id=row.tenant_id, op="paused",
                    per_s=manager.billable(paused_per_second(row)),
                )  # fmt: skip
            else:
                row.paused_at, row.checkpoint_mib = None, 0
                row.last_used_at = utcnow()
                self._rate_running(session, row)
            row.state = state
            session.flush()
            return row

    def _rate_running(self, session: Session, row: Sandbox) -> None:
        """The lease back at the running rate (refused, and rolled back, when the budget cannot hold it)."""
        manager = self.manager
        manager.leases.set_rate(
            session, kind=manager.kind, resource_id=row.id, tenant_id=row.tenant_id, op="lifetime",
            per_s=manager.billable(per_second(row_limits(row))),
        )  # fmt: skip

    # -- resume -----------------------------------------------------------------

    async def resume(self, record: SandboxRecord) -> Sandbox:
        """Restore a paused session sandbox from its checkpoint; one that runs is left so."""
        assert record.container_id is not None
        with self._one_at_a_time(record.id):
            if self._now(record).state not in PAUSED_STATES:
                return self.manager.row(record.id)
            try:
                self._set_resuming(record.id)
            except BudgetExceeded as exc:  # rolled back: the lease is at the paused rate still
                raise BudgetExceeded(
                    f"sandbox {record.id!r} stays paused (billed for its disk only), because its running lease "
                    f"is not covered: {exc.message[0].lower()}{exc.message[1:]}"
                ) from exc
            try:
                await anyio.to_thread.run_sync(self.manager.driver.resume, record.container_id)
            except BaseException:
                self._set(record.id, "paused")  # its checkpoint is still there
                raise
            return await self._hand_back(record)

    def _set_resuming(self, sandbox_id: str) -> None:
        manager = self.manager
        with manager.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id, populate_existing=True)
            assert row is not None
            self._rate_running(session, row)
            row.state = "resuming"

    async def _hand_back(self, record: SandboxRecord) -> Sandbox:
        """A restored sandbox answers, and ends by itself after its idle limit from now on."""
        try:
            request = AgentRequest(idle_s=await self.idle_limit(record))
            await anyio.to_thread.run_sync(self.manager.driver.call, record.handle, request, 10.0)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                busy = isinstance(exc, TaskFailed) and await self._runs(record)
                if not busy:
                    await self.manager.destroy(record.id, "failed_to_resume")
            if busy:
                # A call in flight when it paused came back with it, and its agent serves
                # one request at a time: it answers once that call ends (within its
                # timeout_s). Its idle limit came back too, in its memory.
                log.info("sandbox %s resumed busy with a call from before its pause", record.id)
            elif isinstance(exc, CloudSkillsError):
                raise TaskFailed(
                    f"the sandbox was restored but did not answer ({exc}); it has been destroyed: create a new one."
                ) from exc
            else:
                raise
        return self._set(record.id, "running")

    async def _runs(self, record: SandboxRecord) -> bool:
        assert record.container_id is not None
        try:
            return await anyio.to_thread.run_sync(self.manager.driver.exit_of, record.container_id) is None
        except CloudSkillsError:
            return False

    # -- the reaper's side --------------------------------------------------------

    async def pause_idle(self, sandbox_id: str, reaped: list[str]) -> bool:
        """With idle pausing on, pause a session sandbox idle past its ttl_s instead of
        destroying it; False when it cannot pause (then it is destroyed)."""
        if not self.policy.idle_pause or sandbox_id in self._busy:
            return False
        record = SandboxRecord.of(self.manager.row(sandbox_id))
        if record.container_id is None or await self.problem(record.container_id) is not None:
            return False
        try:
            await self.pause(record)
        except CloudSkillsError as exc:
            log.warning("could not pause idle sandbox %s (it is destroyed instead): %s", sandbox_id, exc)
            return False
        reaped.append(sandbox_id)
        return True

    async def reap(
        self, sandbox_id: str, state: str, paused_at: datetime | None, running: bool, reaped: list[str]
    ) -> None:
        """Settle a paused or resuming record that no pause or resume of ours is handling: one a
        killed process left half done goes by what the engine shows; one paused past the
        retention is destroyed."""
        if sandbox_id in self._busy:
            return
        if running:  # the engine's listing can lag a checkpoint: ask the container itself
            record = SandboxRecord.of(self.manager.row(sandbox_id))
            assert record.container_id is not None
            running = await anyio.to_thread.run_sync(self.manager.driver.exit_of, record.container_id) is None
        try:
            if running and state == "resuming":  # restored, never handed back
                await self._hand_back(SandboxRecord.of(self.manager.row(sandbox_id)))
            elif running and paused_at is not None and paused_at + timedelta(seconds=CHECKPOINT_GRACE_S) < utcnow():
                await self._back_to_running(sandbox_id)  # marked paused, never checkpointed
            elif running:
                return  # maybe mid-checkpoint elsewhere: judged after the grace
            elif state == "resuming":  # never restored: its checkpoint is still there
                self._set(sandbox_id, "paused")
            elif paused_at is not None and paused_at + timedelta(seconds=self.policy.retention_s) < utcnow():
                await self.manager.destroy(sandbox_id, "paused_retention")
                reaped.append(sandbox_id)
        except CloudSkillsError as exc:
            log.warning("could not settle paused sandbox %s: %s", sandbox_id, exc)
