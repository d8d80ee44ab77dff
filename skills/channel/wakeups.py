"""How a waiting receive learns that a message was sent, without polling the store.

    send ──▶ its transaction commits ──▶ ring the channel's bell in this process
         └─▶ (PostgreSQL) NOTIFY in that same transaction ──▶ every replica's LISTEN
             connection ──▶ rings its own bell

A receive takes its channel's bell *before* it looks for messages, so a send that
commits between its look and its wait still wakes it. ``Bells`` is the in-process
part; a ``Notifier`` carries sends between processes: ``LocalNotifier`` when the
store is SQLite (one process serves it), ``PostgresNotifier`` on PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import anyio
import psycopg
from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

log = logging.getLogger("cloudskills.channels")

# The one PostgreSQL notification channel every replica listens on; the payload is the bell's key.
PG_CHANNEL = "cloudskills_channels"
# Seconds between attempts to listen again after the connection was lost.
RELISTEN_S = 1.0


class Bells:
    """One event per key (a tenant's channel) while someone waits on it."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}
        self._waiters: dict[str, int] = {}

    @contextmanager
    def listening(self, key: str) -> Iterator[anyio.Event]:
        """The key's current bell: set by the next ``ring`` of the key."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield event
        finally:
            left = self._waiters[key] - 1
            if left:
                self._waiters[key] = left
            else:
                del self._waiters[key]
                if self._events.get(key) is event:
                    del self._events[key]

    def waiting(self, key: str) -> int:
        """How many wait on ``key`` now."""
        return self._waiters.get(key, 0)

    def ring(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def ring_all(self) -> None:
        for key in list(self._events):
            self.ring(key)


class Notifier(Protocol):
    """Carries a send to the other processes on the same store."""

    def announce(self, session: Session, key: str) -> None:
        """Inside the send's transaction: tell the others once it commits."""
        ...

    async def listen(self, bells: Bells) -> None:
        """Until cancelled: ring ``bells`` for what the others send."""
        ...


class LocalNotifier:
    """SQLite: the store has one serving process, so the in-process bells are all there is."""

    def announce(self, session: Session, key: str) -> None:
        pass

    async def listen(self, bells: Bells) -> None:
        pass


class PostgresNotifier:
    """PostgreSQL's NOTIFY, sent in the send's own transaction (so it is delivered on
    commit, never for a send rolled back), and one LISTEN connection per process."""

    def __init__(self, store_url: str) -> None:
        url = make_url(store_url).set(drivername="postgresql")
        self.dsn = url.render_as_string(hide_password=False)
        # Set while this process's LISTEN connection is up (tests wait on it).
        self.listening = anyio.Event()

    def announce(self, session: Session, key: str) -> None:
        session.execute(text("SELECT pg_notify(:channel, :key)"), {"channel": PG_CHANNEL, "key": key})

    async def listen(self, bells: Bells) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {PG_CHANNEL}")
                    self.listening.set()
                    # Whatever was sent while no one listened: the waiters look again.
                    bells.ring_all()
                    async for note in connection.notifies():
                        bells.ring(note.payload)
            except psycopg.Error as exc:
                log.warning("listening for channel sends on PostgreSQL: %s; again in %g s", exc, RELISTEN_S)
            self.listening = anyio.Event()
            await anyio.sleep(RELISTEN_S)


def notifier_for(store_url: str) -> Notifier:
    if make_url(store_url).get_backend_name() == "postgresql":
        return PostgresNotifier(store_url)
    return LocalNotifier()
