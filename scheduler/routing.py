"""Routing: a call on a resource that lives on one machine runs on a server there.

Sandboxes, memories and channels live in the Docker engines and the store, which
every replica reaches. A database's file or server, a VM's process and a
workspace's mount live on the machine that made them, in its data dir: their
*place*, the data dir's own id (``scheduler.places``). Each server records its place
on its worker row, and a lease records where its resource was made (``Lease.place``).

While servers of more than one place are alive, a call naming such a resource
(the argument fields its skill declares ``host_bound``) that a server elsewhere
admits is stored queued with that place and its whole arguments (``payload``).
A server of that place claims it (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
two of one place never take the same), runs it as its own and stores its whole
result in the payload; the admitting server, polling every ``POLL_S``, hands it
to its caller and empties the payload (the row keeps details, as for any task).
Admission, the hold and the settlement are the store's, the same wherever the
task runs. The caller's server fails a task whose place has no live server
left, or that was never claimed by its deadline; a cancel there settles the
task at once, and the running server stops it on its next poll.

A call on a resource whose place has no live server fails at once, saying to start
one there; the call never runs where the resource's data is not. With one place
alive and every live resource made there (one server, or replicas sharing a data
dir) nothing is routed and no call reads a place; each heartbeat looks once for
resources made elsewhere, and for tasks routed here by a server that has gone
since (they run all the same).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
from pydantic import BaseModel
from sqlalchemy import select, update

from common.errors import BackendUnavailable, CloudSkillsError, InvalidInput, Timeout
from scheduler.leases import Leases
from scheduler.models import Task, utcnow
from scheduler.task_recovery import NO_SERVER_THERE
from scheduler.task_rows import CLAIM_ROUTED, Claimed
from scheduler.task_types import outcome_of
from scheduler.tasks import Scheduler
from scheduler.workers import Workers

log = logging.getLogger("cloudskills.routing")

POLL_S = 0.05
STOPPED_THERE = (
    "the server running this task on the machine where its resource lives stopped midway, and none runs "
    "there now; nothing was charged: start one there, then call again."
)


def ids_in(args: Any, fields: frozenset[str]) -> list[str]:
    """The values of ``fields`` anywhere in the arguments (a list of mounts included)."""
    found: list[str] = []
    values: Iterable[tuple[str, Any]] = iter(args) if isinstance(args, BaseModel) else ()
    for name, value in values:
        if name in fields and isinstance(value, str):
            found.append(value)
        elif isinstance(value, BaseModel):
            found += ids_in(value, fields)
        elif isinstance(value, list | tuple):
            for item in value:
                found += ids_in(item, fields)
    return found


class Router:
    def __init__(self, scheduler: Scheduler, workers: Workers, leases: Leases, fields: frozenset[str]) -> None:
        assert workers.place is not None
        self.scheduler = scheduler
        self.workers = workers
        self.leases = leases
        self.fields = fields
        self.place: str = workers.place
        self.places: set[str] = {self.place}  # the live ones, as of the last ``refresh``
        self.waiting: set[str] = set()  # tasks admitted here that run at another place
        self.refreshed = False  # a call before the first heartbeat (the CLI's one call) refreshes first
        # Whether a live resource was made at another place (as of the last ``refresh``): then
        # a call on one reads where it lives, even with one place alive (its server may be gone,
        # or have started since this one last looked).
        self.foreign = True
        # Tasks routed here by a server that is gone may wait in the queue: claimed even with one
        # place alive, until none is left (looked for at start and on each heartbeat).
        self.strays = True
        self._wake: anyio.Event | None = None  # set by what gives ``serve`` work while it idles

    # -- the admitting side ----------------------------------------------------

    def wait_for(self, task_id: str) -> None:
        """Collect the result of a task admitted here that runs at another place."""
        self.waiting.add(task_id)
        self._nudge()

    def place_for(self, args: Any) -> str | None:
        """Where a call must run: None for here (or anywhere)."""
        if not self.fields:
            return None
        if not self.refreshed:
            self.refresh()
        ids = ids_in(args, self.fields)
        if not ids or (len(self.places) < 2 and not self.foreign):
            return None
        places = set(self.leases.places_of(ids).values())
        if len(places) > 1:
            raise InvalidInput(
                f"{', '.join(sorted(ids))} live on different machines, and one call can only run on one: "
                "use resources of one machine together (list them to see where each lives)."
            )
        if not places or places == {self.place}:
            return None
        place = places.pop()
        if place not in self.workers.live_places():
            raise BackendUnavailable(
                f"{', '.join(sorted(ids))} lives on a machine where no server is running now (in the data dir "
                f"whose `place` file says {place}): start `cloudskills serve` there with that data dir, then call "
                "again."
            )
        return place

    def refresh(self) -> None:
        """On each heartbeat: the live places; fail what waits on a place that has none left
        (queued, or stopped midway there), or was never claimed before its deadline."""
        self.places, self.refreshed = self.workers.live_places(), True
        self.foreign = len(self.places) > 1 or self.leases.made_elsewhere(self.place)
        if len(self.places) < 2 and not self.strays:
            self.strays = self._stranded()
        self._nudge()
        if not self.waiting:
            return
        now = utcnow()
        with self.scheduler.store.transaction() as session:
            active = session.execute(
                select(Task.id, Task.state, Task.place, Task.created_at, Task.timeout_s).where(
                    Task.id.in_(self.waiting), Task.state.in_(("queued", "running"))
                )
            ).all()
        for task_id, state, place, created_at, timeout_s in active:
            if state == "running":
                if place not in self.places:  # the server running it there is gone, and no one judges it here
                    self.scheduler.settle_stopped(task_id, BackendUnavailable(STOPPED_THERE))
            elif place not in self.places:
                self.scheduler.settle_unrun(task_id, "failed", BackendUnavailable(NO_SERVER_THERE))
            elif created_at + timedelta(seconds=timeout_s + self.scheduler.deadline_overhead_s) < now:
                error = Timeout("no server where this task's resource lives took it before its deadline.")
                self.scheduler.settle_unrun(task_id, "timed_out", error)

    def _stranded(self) -> bool:
        """Whether a task waits in the queue for this place (one indexed read, on a heartbeat)."""
        with self.scheduler.store.transaction() as session:
            found = session.scalar(select(Task.id).where(Task.state == "queued", Task.place == self.place).limit(1))
        return found is not None

    def _collect(self) -> None:
        """Hand the results of tasks that ended elsewhere to their waiters here."""
        with self.scheduler.store.transaction() as session:
            ended = session.scalars(select(Task).where(Task.id.in_(self.waiting), Task.finished_at.is_not(None))).all()
            for task in ended:
                outcome = outcome_of(task)
                if task.payload is not None:
                    outcome = replace(outcome, result=task.payload)
                task.payload = None
                self.waiting.discard(task.id)
                self.scheduler.delivered(outcome)

    # -- the running side --------------------------------------------------------

    def reroute(self, task_id: str) -> bool:
        """Send a dead server's task that recovery would run again here to the place where its
        resource lives (or fail it when no server lives there); False: it runs here."""
        with self.scheduler.store.transaction() as session:
            found = session.execute(select(Task.skill, Task.op, Task.args).where(Task.id == task_id)).one_or_none()
        binding = None if found is None else self.scheduler.bindings().get(f"{found.skill}.{found.op}")
        if found is None or binding is None:
            return False
        try:
            place = self.place_for(binding.load(found.args))
        except CloudSkillsError as error:
            self.scheduler.settle_unrun(task_id, "failed", error)
            return True
        if place is None:
            return False
        with self.scheduler.store.transaction() as session:
            # Its result comes back here, where the payload is emptied (``_collect``).
            session.execute(
                update(Task)
                .where(Task.id == task_id, Task.state == "queued")
                .values(place=place, payload=found.args, worker_id=self.scheduler.worker_id)
            )
        self.wait_for(task_id)
        return True

    def _claim_here(self) -> bool:
        """Claim this place's queued tasks, as many as there are free slots, and run them;
        whether some may be left (every free slot was taken, or none was free)."""
        free = self.scheduler.free_slots()
        if free <= 0:
            return True
        claimed: list[tuple[Claimed, dict[str, Any]]] = []
        with self.scheduler.store.transaction() as session:
            found = session.scalars(
                select(Task.id)
                .where(Task.state == "queued", Task.place == self.place)
                .order_by(Task.created_at)
                .limit(free)
                .with_for_update(skip_locked=True)
            ).all()
            now = utcnow()
            for task_id in found:
                claim = {"task_id": task_id, "now": now, "worker_id": self.scheduler.worker_id}
                row = session.connection().execute(CLAIM_ROUTED, claim).one_or_none()
                if row is not None:
                    claimed.append((Claimed(*row[:8]), row[8] or {}))
        for task, payload in claimed:
            self.scheduler.start_routed(task, payload)
        return len(found) == free

    def _stop_settled(self) -> None:
        """Stop tasks running here whose caller's server settled them (a cancel there)."""
        running = self.scheduler.routed_running()
        if not running:
            return
        with self.scheduler.store.transaction() as session:
            settled = set(session.scalars(select(Task.id).where(Task.id.in_(running), Task.finished_at.is_not(None))))
        self.scheduler.cancel_running(settled)

    def _busy(self) -> bool:
        """Whether there is anything to poll the store for."""
        return len(self.places) > 1 or self.strays or bool(self.waiting)

    def idle(self) -> bool:
        """Whether ``serve`` sleeps, with nothing to poll for."""
        return self._wake is not None and not self._wake.is_set()

    def _nudge(self) -> None:
        # Called on the event loop's thread only (admission, heartbeats, recovery), as
        # ``anyio.Event.set`` must be.
        if self._wake is not None and self._busy():
            self._wake.set()

    async def serve(self) -> None:
        while True:
            if not self._busy():
                # One place alive, no stray task, no result awaited elsewhere: the usual
                # single server. Polling then would only cost CPU (20 wake-ups a second, a
                # fifth of an idle server's), so sleep until a call, a heartbeat or recovery
                # gives this loop something to look for.
                self._wake = anyio.Event()
                await self._wake.wait()
                self._wake = None
            await anyio.sleep(POLL_S)
            try:
                if len(self.places) > 1 or self.strays:
                    more = self._claim_here()
                    self.strays = self.strays and more
                    self._stop_settled()
                if self.waiting:
                    self._collect()
            except Exception:  # the store is unreachable a moment: the next poll retries
                log.exception("routing poll failed")
