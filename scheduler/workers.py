"""The server processes that share a store (replicas), their heartbeats, and who leads a duty.

Each serving process registers a worker row and renews its heartbeat every
``HEARTBEAT_S``. A worker is dead once its heartbeat is older than ``lapse_s``,
or at once when it ran on this host and its process is gone (a restart on the
same machine need not wait out the lapse). What a dead worker left is then
settled by whoever sees it: its running tasks failed and refunded (retried when
their op is idempotent), its queued ones taken over, its warm sandboxes reaped.

A duty that one replica at a time must do (reaping, lease renewals) is led
through a row in ``leaders``: the worker named there leads until ``until``; it
extends that while it lives, and any other takes the duty over once it lapses.
On SQLite (one host) the same rows keep two servers on one data dir (two stdio
servers of two MCP clients) from failing each other's tasks at start.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.processes import pid_alive
from scheduler.models import Leader, Worker, utcnow
from scheduler.store import Store

HEARTBEAT_S = 2.0
DEFAULT_LAPSE_S = 10.0


class Census(NamedTuple):
    alive: set[str]  # worker ids, this one's included
    dead: set[str]
    places: set[str]  # where the live ones run (``scheduler.routing``)


class Workers:
    def __init__(
        self, store: Store, worker_id: str, lapse_s: float = DEFAULT_LAPSE_S, place: str | None = None
    ) -> None:
        self.store = store
        self.id = worker_id
        self.lapse_s = lapse_s
        self.host = socket.gethostname()
        self.place = place  # its host and data dir (``scheduler.routing``)

    def _row(self) -> Worker:
        now = utcnow()
        return Worker(id=self.id, host=self.host, pid=os.getpid(), started_at=now, heartbeat_at=now, place=self.place)

    def register(self) -> None:
        with self.store.transaction() as session:
            session.add(self._row())

    def beat(self) -> None:
        """Renew this worker's heartbeat (registered again if another replica had judged it dead)."""
        with self.store.transaction() as session:
            done = session.connection().execute(
                update(Worker).where(Worker.id == self.id).values(heartbeat_at=utcnow())
            )
            if not done.rowcount:
                session.add(self._row())

    def leave(self) -> None:
        """A clean stop: this worker is gone, and leads nothing."""
        with self.store.transaction() as session:
            session.execute(delete(Leader).where(Leader.worker_id == self.id))
            session.execute(delete(Worker).where(Worker.id == self.id))

    def census(self) -> Census:
        """Who is alive and who is dead, and the live places, from one read: dead is heartbeat
        lapsed, or on this host with no process; alive is every other, this worker included."""
        lapsed_before = utcnow() - timedelta(seconds=self.lapse_s)
        with self.store.transaction() as session:
            rows = session.execute(select(Worker.id, Worker.host, Worker.pid, Worker.heartbeat_at, Worker.place)).all()
        found = Census({self.id}, set(), {self.place} if self.place else set())
        for worker_id, host, pid, heartbeat_at, place in rows:
            if worker_id != self.id and (heartbeat_at < lapsed_before or (host == self.host and not pid_alive(pid))):
                found.dead.add(worker_id)
            else:
                found.alive.add(worker_id)
                if place is not None:
                    found.places.add(place)
        return found

    def dead(self) -> set[str]:
        return self.census().dead

    def alive(self) -> set[str]:
        return self.census().alive

    def live_places(self) -> set[str]:
        """The places with a live worker (this one's included)."""
        return self.census().places

    def forget(self, session: Session, worker_ids: set[str]) -> None:
        """Drop dead workers' rows once what they left is settled (in that transaction)."""
        if worker_ids:
            session.execute(delete(Worker).where(Worker.id.in_(worker_ids)))

    def lead(self, duty: str, lease_s: float) -> bool:
        """Lead ``duty`` for ``lease_s`` more: True if this worker leads it now."""
        now = utcnow()
        until = now + timedelta(seconds=lease_s)
        with self.store.transaction() as session:
            taken = session.connection().execute(
                update(Leader)
                .where(Leader.duty == duty, (Leader.worker_id == self.id) | (Leader.until < now))
                .values(worker_id=self.id, until=until)
            )
            if taken.rowcount:
                return True
            if session.get(Leader, duty) is not None:
                return False
        try:
            with self.store.transaction() as session:
                session.add(Leader(duty=duty, worker_id=self.id, until=until))
        except IntegrityError:
            return False  # another worker made the row first: it leads
        return True
