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
from collections import deque
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
NOTIFY = text("SELECT pg_notify(:channel, :key)")
# Seconds between attempts to listen again after the connection was lost.
RELISTEN_S = 1.0


class Bells:
    """The receives waiting on each key (a tenant's channel), oldest first.

    A ring wakes one of them: a send brings one message, and waking every waiter
    for it would have all but one look for it in vain. A waiter woken but stopped
    before it could look (its call cancelled) passes its ring on to the next."""

    def __init__(self) -> None:
        self._waiters: dict[str, deque[anyio.Event]] = {}

    @contextmanager
    def listening(self, key: str) -> Iterator[anyio.Event]:
        """This waiter's bell for ``key``: set by a ``ring`` of the key."""
        event = anyio.Event()
        self._waiters.setdefault(key, deque()).append(event)
        looked = False
        try:
            yield event
            looked = True
        finally:
            waiting = self._waiters[key]
            waiting.remove(event)
            if not waiting:
                del self._waiters[key]
            if event.is_set() and not looked:
                self.ring(key)

    def waiting(self, key: str) -> int:
        """How many wait on ``key`` and were not woken yet."""
        return sum(not event.is_set() for event in self._waiters.get(key, ()))

    def ring(self, key: str) -> None:
        """Wake the longest waiting on ``key`` not woken yet, if any."""
        for event in self._waiters.get(key, ()):
            if not event.is_set():
                event.set()
                return

    def ring_all(self, key: str | None = None) -> None:
        """Wake every waiter of ``key`` (of every key by default): they all look again."""
        for found in [key] if key is not None else list(self._waiters):
            for event in self._waiters.get(found, ()):
                event.set()


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
        session.connection().execute(NOTIFY, {"channel": PG_CHANNEL, "key": key})

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
