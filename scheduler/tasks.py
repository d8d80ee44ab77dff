"""Tasks: every call of every op is one durable row that this process runs.

    submit ──▶ admission (quotas, hold the worst case) + the row, one transaction:
               "running" at once when a slot is free, else "queued"
           ──▶ run the handler under its deadline and a cancel scope
           ──▶ settle: final state + ledger + release of the hold, one transaction,
               which also claims the oldest queued task for the freed slot

At most ``concurrency`` tasks run at once.
On start, ``recover`` resolves what a previous process left behind: tasks
that were running are failed with a clear reason (or queued again when their
op is idempotent), and queued tasks are queued again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from common.errors import (
    BackendUnavailable,
    BudgetExceeded,
    Cancelled,
    CloudSkillsError,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TaskFailed,
    Timeout,
    sole_error,
)
from scheduler import ledger, quotas
from scheduler.fair_queue import FairQueue
from scheduler.models import Task, utcnow
from scheduler.observe import NO_OBSERVER, TaskObserver
from scheduler.pricing import PriceCatalog, Usage
from scheduler.resources import Services
from scheduler.store import Store
from scheduler.task_details import Details, summarize
from scheduler.task_recovery import judge
from scheduler.task_rows import CLAIM, FINISH, INSERT_TASK, PRUNE, SETTLING, Claimed
from scheduler.task_types import (
    OpBinding,
    Progress,
    RateLimited,
    TaskContext,
    TaskOutcome,
    TextReports,
    as_json,
    new_id,
    outcome_of,
)

if TYPE_CHECKING:
    from scheduler.routing import Router

__all__ = [
    "OpBinding",
    "Progress",
    "RateLimited",
    "Scheduler",
    "TaskContext",
    "TaskOutcome",
    "TextReports",
    "new_id",
    "outcome_of",
]

log = logging.getLogger("cloudskills.scheduler")

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
# Errors that mean the task did no billable work when it used nothing: the
# caller's mistake caught in the handler, or the platform's own failure.
FREE_WHEN_UNUSED = (InvalidInput, NotFound, Forbidden, BackendUnavailable, BudgetExceeded, QuotaExceeded)
# Time a task may take beyond its own timeout_s (starting a machine, moving files).
DEADLINE_OVERHEAD_S = 30.0


async def unwrapped(call: Awaitable[Any]) -> Any:
    """The handler's result; an error it raised inside a task group reaches the scheduler
    wrapped in an ExceptionGroup, and one wrapping a single error of ours is that error
    (what it says is for the caller, not an internal error)."""
    try:
        return await call
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if isinstance(sole, CloudSkillsError):
            raise sole from group
        raise


NEVER_STARTED = Cancelled("the task was cancelled before it started; nothing was charged.")


class Scheduler:
    def __init__(
        self, store: Store, catalog: PriceCatalog, services: Services | None = None, concurrency: int = 16
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.services = services
        self.concurrency = concurrency
        self.deadline_overhead_s = DEADLINE_OVERHEAD_S
        self.observer: TaskObserver = NO_OBSERVER  # metrics, traces and logs (scheduler.observe)
        self._bindings: dict[str, OpBinding] = {}
        # Tasks someone in this process may wait for: set when the task settles,
        # with its outcome, so a waiter needs no read of the store.
        self._done: dict[str, anyio.Event] = {}
        self._outcomes: dict[str, TaskOutcome] = {}
        self._running: dict[str, anyio.CancelScope] = {}
        # Where running tasks report progress: the caller's listener, for tasks whose caller waits.
        self._progress: dict[str, Progress] = {}
        # The arguments of tasks submitted here, as the caller validated them (the
        # store's JSON copy is only read back for tasks queued by another process).
        self._args: dict[str, Any] = {}
        # Ids of queued tasks, handed to free slots fairly between tenants (``FairQueue``);
        # free slots are the tasks that may start now.
        self._queue = FairQueue()
        self._slots = concurrency
        self._group: TaskGroup | None = None
        # This process among the store's workers (``scheduler.workers``): recorded on each task it runs.
        self.worker_id = new_id("w")
        # Calls on resources at other places go there (``scheduler.routing``); None: all run here.
        self.router: Router | None = None
        self.place: str | None = None
        # Tasks running here for a server elsewhere: their whole result is stored for it.
        self._routed: set[str] = set()

    def bind(self, binding: OpBinding) -> None:
        self._bindings[binding.key] = binding

    def binding(self, key: str) -> OpBinding:
        return self._bindings[key]

    # -- the caller's side -------------------------------------------------

    def submit(self, tenant_id: str, binding: OpBinding, args: Any, agent: str | None = None) -> str:
        """Admit and store a task for ``tenant_id`` (its ``agent``, if named), then queue it;
        raise before any work if it is refused. A task on a resource that lives at another
        place is queued for a server there (``scheduler.routing``)."""
        place = self.router.place_for(args) if self.router is not None else None
        task_id, since = new_id("t"), time.time_ns()
        worst = binding.worst_case(args)
        # An op that is never refused for money holds nothing (see OpBinding).
        hold = 0 if binding.always_admitted else self.catalog.worst_case(binding.key, worst)
        # With a slot free the task is stored already running: one transaction
        # fewer than queued-then-claimed, for what is most calls. A read, a delete or a
        # cancel starts at once even when every slot is taken: long calls (a tenant's
        # generations) must never keep anyone from listing, cancelling or deleting. Nor
        # from starting at all: a tenant with nothing running here starts one call beyond
        # the slots (at most as many such calls as there are slots).
        free = self._slots > 0 and not self._queue
        first = self._may_start_first(tenant_id)
        starts_now = place is None and self._group is not None and (free or binding.always_admitted or first)
        now = utcnow()
        timeout_s = binding.timeout_s(args)
        stored_args = as_json(args)
        kept = summarize(stored_args, binding.secret)
        row = {
            "id": task_id,
            "tenant_id": tenant_id,
            "agent": agent,
            "skill": binding.skill,
            "op": binding.op,
            # Whole only when nothing had to be cut: a task queued when the server
            # dies can then run after a restart (see recover).
            "args": kept.value,
            "args_whole": kept.whole,
            "state": "running" if starts_now else "queued",
            "idempotent": binding.idempotent,
            "timeout_s": timeout_s,
            "attempts": 1 if starts_now else 0,
            "max_attempts": 2 if binding.idempotent else 1,
            "created_at": now,
            "started_at": now if starts_now else None,
            "hold_micros": hold,
            "cost_micros": 0,
            "worker_id": self.worker_id,
            "place": place,
            "payload": stored_args if place is not None else None,
        }
        try:
            with self.store.transaction() as session:
                tenant = ledger.admit(session, tenant_id, hold)
                quotas.check_tasks(session, tenant, worst)
                if not binding.always_admitted:  # a read or a delete is never refused for money
                    ledger.check_budget(self.catalog, tenant, hold, ask_less=binding.ask_less, op=binding.key)
                session.connection().execute(INSERT_TASK, row)
        except CloudSkillsError as refusal:
            self.observer.refused(binding.skill, binding.op, tenant_id, refusal, since)
            raise
        self.observer.admitted(task_id, binding.skill, binding.op, tenant_id, agent, since)
        self._done[task_id] = anyio.Event()
        self._args[task_id] = args
        if starts_now:
            self._start(Claimed(task_id, tenant_id, binding.skill, binding.op, stored_args, timeout_s, hold, agent))
        elif place is not None:
            assert self.router is not None
            self._args.pop(task_id)
            self.router.wait_for(task_id)
        else:
            self._queue.append(task_id, tenant_id)
        return task_id

    def bindings(self) -> dict[str, OpBinding]:
        return self._bindings

    def start_routed(self, task: Claimed, payload: dict[str, Any]) -> None:
        """Run a task another place admitted for a resource here; its whole result is stored
        for the server that waits for it."""
        binding = self._bindings.get(f"{task.skill}.{task.op}")
        if binding is not None:
            self._args[task.id] = binding.load(payload)
        self._routed.add(task.id)
        self._start(task)

    def free_slots(self) -> int:
        return self._slots if self._group is not None else 0

    def delivered(self, outcome: TaskOutcome) -> None:
        """A task that ran elsewhere has ended: wake whoever here waits for it."""
        event = self._done.pop(outcome.task_id, None)
        if event is not None:
            self._outcomes[outcome.task_id] = outcome
            event.set()

    def settle_unrun(self, task_id: str, state: str, error: CloudSkillsError) -> bool:
        """End a task that never ran (nothing used, nothing charged), unless it is not queued
        any more: claimed meanwhile by a server where its resource lives, or ended already.
        Whether it was ended here."""
        claimed = self._claim(task_id)  # taken from the queue first, so no one else can start it
        if claimed is None:
            return False
        self._finish(task_id, state, None, error, Usage(), claimed, started=False)
        return True

    def settle_stopped(self, task_id: str, error: CloudSkillsError) -> None:
        """Fail a task whose server stopped midway (nothing charged), unless it has ended already."""
        self._finish(task_id, "failed", None, error, Usage())

    def routed_running(self) -> set[str]:
        return self._routed & set(self._running)

    def cancel_running(self, task_ids: set[str]) -> None:
        """Stop tasks running here that were settled elsewhere (cancelled by their caller's server)."""
        for task_id in task_ids:
            scope = self._running.get(task_id)
            if scope is not None:
                scope.cancel()

    def forget(self, task_id: str) -> None:
        """No one in this process waits for the task any more (an MCP task handle is polled
        from the store instead): its outcome is not kept in memory."""
        self._done.pop(task_id, None)
        self._outcomes.pop(task_id, None)

    async def wait(self, task_id: str) -> TaskOutcome:
        event = self._done.get(task_id)
        if event is not None:
            await event.wait()
        outcome = self._outcomes.pop(task_id, None)
        if outcome is not None:
            return outcome
        with self.store.transaction() as session:
            task = session.get(Task, task_id)
            assert task is not None
            return outcome_of(task)

    async def run(
        self, tenant_id: str, binding: OpBinding, args: Any, progress: Progress | None = None, agent: str | None = None
    ) -> TaskOutcome:
        task_id = self.submit(tenant_id, binding, args, agent)
        if progress is not None:
            self._progress[task_id] = progress
        try:
            return await self.wait(task_id)
        except anyio.get_cancelled_exc_class():
            # The caller went away (client disconnected, request cancelled):
            # the task must not run on unobserved.
            with anyio.CancelScope(shield=True):
                await self.cancel(tenant_id, task_id)
            raise

    def get(self, tenant_id: str, task_id: str) -> Task:
        with self.store.reading() as session:  # a client's polling (MCP tasks/get) never waits for a writer
            task = session.get(Task, task_id)
            if task is None or task.tenant_id != tenant_id:
                raise NotFound(f"no task {task_id!r}: list your tasks to see their ids.")
            return task

    async def cancel(self, tenant_id: str, task_id: str) -> str:
        """Cancel a queued or running task; return its state afterwards."""
        task = self.get(tenant_id, task_id)
        if task.state in FINAL_STATES:
            return task.state
        scope = self._running.get(task_id)
        if scope is not None:
            # Woken once it has stopped, even when no one here waited for it (run for another
            # place, or handed over as an MCP task).
            self._done.setdefault(task_id, anyio.Event())
            scope.cancel()
            await self.wait(task_id)
        elif not (task.state == "queued" and self.settle_unrun(task_id, "cancelled", NEVER_STARTED)):
            # Running at another place (stopped there once it sees this), or claimed there meanwhile.
            self._finish(task_id, "cancelled", None, Cancelled("the task was cancelled."), Usage())
        return self.get(tenant_id, task_id).state

    # -- the workers' side -------------------------------------------------

    async def serve(self) -> None:
        """Run tasks, at most ``concurrency`` at once, until cancelled."""
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self._pump()
                await anyio.sleep_forever()
        finally:
            self._group = None

    def _start(self, task: Claimed) -> None:
        assert self._group is not None
        self._slots -= 1
        self._queue.started(task.tenant_id)  # now: a submit right after sees it running
        # Its scope from now: a cancel before the task's first step still finds and stops it.
        # (A task its slot's last one claimed, ``_finish``, runs on without a step between.)
        self._running[task.id] = anyio.CancelScope()
        self._group.start_soon(self._execute, task)

    def _pump(self) -> None:
        """Start queued tasks while slots are free."""
        while self._group is not None and self._slots > 0 and self._queue:
            task = self._claim(self._queue.pop_next())
            if task is not None:
                self._start(task)

    def _claim(self, task_id: str) -> Claimed | None:
        """Mark a queued task running; None if it is not queued any more (cancelled, or claimed elsewhere)."""
        with self.store.transaction() as session:
            claim = {"task_id": task_id, "now": utcnow(), "worker_id": self.worker_id}
            row = session.connection().execute(CLAIM, claim).one_or_none()
        return None if row is None else Claimed(*row)

    async def _execute(self, task: Claimed) -> None:
        """Run the task, then whatever queued task its settlement claimed, in this one slot."""
        following: Claimed | None = task  # counted running by _start
        tenant_id = task.tenant_id
        try:
            while following is not None:
                tenant_id = following.tenant_id
                try:
                    following = await self._run(following)
                finally:
                    self._queue.ended(tenant_id)
                if following is not None:
                    self._queue.started(following.tenant_id)  # what the next free slot's pick goes by
        finally:
            self._slots += 1
            self._pump()
            self._start_first(tenant_id)

    def _room_beyond_slots(self, tenant_id: str) -> bool:
        """Whether ``tenant_id``, with nothing running here, may start a call beyond the slots:
        fewer such calls run than there are slots."""
        return not self._queue.running[tenant_id] and self._slots > -self.concurrency

    def _may_start_first(self, tenant_id: str) -> bool:
        """Whether a call of ``tenant_id`` may start beyond the slots: it has nothing running
        or queued here, and there is room beyond the slots."""
        return self._room_beyond_slots(tenant_id) and not self._queue.holds(tenant_id)

    def _start_first(self, tenant_id: str) -> None:
        """A tenant left with nothing running but calls queued starts its oldest one beyond
        the slots, as a call it sent then would have."""
        while self._group is not None and self._room_beyond_slots(tenant_id):
            task_id = self._queue.pop_oldest_of(tenant_id)
            if task_id is None:
                return
            task = self._claim(task_id)
            if task is not None:
                self._start(task)

    async def _run(self, task: Claimed) -> Claimed | None:
        task_id = task.id
        binding = self._bindings.get(f"{task.skill}.{task.op}")
        ctx = TaskContext(task.id, task.tenant_id, self.services, task.agent, progress=self._progress.get(task.id))
        ledger.acting_agent.set(task.agent)  # what the handler opens (a lease) is this agent's
        result: Any = None
        error: CloudSkillsError | None = None
        state = "failed"
        keep = False
        scope, running = self._running.get(task_id) or anyio.CancelScope(), self.observer.running(task)
        self._running[task_id] = scope
        try:
            with scope, running, anyio.move_on_after(task.timeout_s + self.deadline_overhead_s) as deadline:
                if binding is None:
                    raise TaskFailed(f"this server does not know the op {task.skill}_{task.op}; upgrade it.")
                try:
                    args = self._args.pop(task_id, None)
                    if args is None:
                        args = binding.load(task.args)
                    keep = binding.keeps_result(args)
                    result = await unwrapped(binding.handler(ctx, args))
                    state = "succeeded"
                except Timeout as exc:
                    state, error = "timed_out", exc
                except Cancelled as exc:
                    state, error = "cancelled", exc
                except CloudSkillsError as exc:
                    state, error = "failed", exc
                except Exception:
                    log.exception("task %s (%s.%s) crashed", task.id, task.skill, task.op)
                    error = TaskFailed(
                        f"task {task.id} failed with an internal error, which was logged; try again, "
                        "and report it if it happens again."
                    )
            if deadline.cancelled_caught:
                state = "timed_out"
                error = Timeout(f"the task ran past its deadline of {task.timeout_s:g} s and was stopped.")
            elif scope.cancelled_caught:
                state, error = (
                    "cancelled",
                    Cancelled("the task was cancelled; what it used so far was billed."),
                )
        finally:
            self._running.pop(task_id, None)
            self._progress.pop(task_id, None)
            self._args.pop(task_id, None)
        # A task that started beyond the slots (``submit``) leaves the next queued one to a slot.
        within = self._slots >= 0
        return self._finish(task_id, state, result, error, ctx.usage, task, claim_next=within, keep_result=keep)

    def _finish(
        self,
        task_id: str,
        state: str,
        output: Any,
        error: CloudSkillsError | None,
        usage: Usage,
        claimed: Claimed | None = None,
        claim_next: bool = False,
        keep_result: bool = False,
        started: bool = True,
    ) -> Claimed | None:
        """Record the final state and settle the task's money, in one transaction; the
        result is the op's output with the task's id and cost added, stored whole with
        ``keep_result`` and as details otherwise (see scheduler.task_details).

        With ``claim_next`` the same transaction also claims the oldest queued
        task, which is returned for the caller's slot to run next. A task that never
        ``started`` costs nothing, as does one that failed, unused, for a reason in
        FREE_WHEN_UNUSED."""
        following: Claimed | None = None
        self._args.pop(task_id, None)
        with self.store.transaction() as session:
            task = claimed or session.connection().execute(SETTLING, {"task_id": task_id}).one()
            op_key = f"{task.skill}.{task.op}"
            free = (not started or isinstance(error, FREE_WHEN_UNUSED)) and usage == Usage()
            charges = [] if free else self.catalog.task_charges(op_key, usage)
            binding = self._bindings.get(op_key)
            if charges and binding is not None and binding.always_admitted:
                charges = ledger.affordable(session, task.tenant_id, charges)
            elif sum(charge.amount_micros for charge in charges) > task.hold_micros:
                # Never more than was held at admission (what the budget was checked against).
                log.warning("task %s (%s) used more than its worst case: charged what was held", task_id, op_key)
                charges = ledger.capped(charges, task.hold_micros)
            cost = sum(charge.amount_micros for charge in charges)
            result = None if output is None else as_json(output)
            if result is not None and (binding is None or binding.envelope):
                result |= {"task_id": task_id, "cost": self.money(cost)}
            kept = result if keep_result or result is None else summarize(result, binding.secret if binding else ())
            # Run here for a server elsewhere: the whole result travels back in the payload.
            routed = task_id in self._routed
            self._routed.discard(task_id)
            final = {
                "task_id": task_id,
                "state": state,
                "now": utcnow(),
                "result": kept if not isinstance(kept, Details) else kept.value,
                "error_code": error.code if error else None,
                "error_message": error.message if error else None,
                "cost": cost,
                "payload": result if routed else None,
            }
            # Only the one that moves the task out of an active state settles it.
            if session.connection().execute(FINISH, final).rowcount != 1:
                return None
            posting = ledger.Posting(f"task:{task_id}", task.tenant_id, task_id, task.skill, task.op, task.agent)
            # Posting nothing still releases the hold.
            ledger.post(session, self.catalog, posting, charges, release=task.hold_micros, ends_task=True, checked=True)
            while claim_next and following is None and self._queue:
                claim = {"task_id": self._queue.pop_next(), "now": final["now"], "worker_id": self.worker_id}
                row = session.connection().execute(CLAIM, claim)
                next_row = row.one_or_none()
                following = None if next_row is None else Claimed(*next_row)
        outcome = TaskOutcome(task_id, state, result, error, cost, output)
        self.observer.settled(task_id, task, state, cost, usage, error)
        event = self._done.pop(task_id, None)
        if event is not None:
            self._outcomes[task_id] = outcome
            event.set()
        return following

    def prune(self, retention_s: float) -> int:
        """Drop the details (arguments, result) of tasks finished more than ``retention_s``
        ago; their rows keep op, timing, cost and error, and the ledger is kept for good."""
        before = utcnow() - timedelta(seconds=retention_s)
        with self.store.transaction() as session:
            return int(session.connection().execute(PRUNE, {"before": before}).rowcount or 0)

    def money(self, micros: int) -> dict[str, Any]:
        return {"micros": micros, "amount": self.catalog.format(micros)}

    # -- restart -----------------------------------------------------------

    def recover(self, alive: set[str] | None = None, places: set[str] | None = None) -> list[str]:
        """Resolve what dead processes left (``scheduler.task_recovery``): their running tasks
        fail or retry, their queued ones run here. A task is a dead process's when its worker
        is not in ``alive`` (None: only this process is, as on a restart of the only server);
        ``places`` are the live ones (None: this one's)."""
        alive = {self.worker_id} if alive is None else alive
        places = ({self.place} if self.place else set()) if places is None else places
        with self.store.transaction() as session:
            orphans = judge(session, alive, places)
        failed = orphans.errors()
        for task_id, error in failed:
            self._finish(task_id, "failed", None, error, Usage())
        for task_id in orphans.requeue:
            if self.router is not None and self.router.reroute(task_id):
                continue  # its resource lives at another place: it runs there
            self._done[task_id] = anyio.Event()
            self._queue.append(task_id, orphans.tenant_of[task_id])
        self._pump()
        return [task_id for task_id, _ in failed]
