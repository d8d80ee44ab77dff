"""Idle PostgreSQL connections kept per instance, so a query skips the connect and
the password exchange (most of a short query's time).

Every connection is in autocommit mode with server-side prepared statements
off; a query runs in its own explicit transaction followed by ``DISCARD ALL``,
and a connection goes back to the pool only idle, so no session state (SET,
temporary tables, advisory locks) leaks from one call to the next.
"""

from __future__ import annotations

import contextlib
import select
import threading

import psycopg
from psycopg.pq import TransactionStatus

IDLE_PER_INSTANCE = 4


def dropped(conn: psycopg.Connection) -> bool:
    """Whether the server has let go of an idle connection (it restarted, or ended the backend).

    An idle connection hears nothing from a live server; one that ends it sends
    a last error and closes, so its socket turns readable. Checked before a
    statement is sent, so no statement is ever sent twice."""
    if conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (psycopg.Error, OSError, ValueError):
        return True


class ConnectionPool:
    def __init__(self, per_instance: int = IDLE_PER_INSTANCE) -> None:
        self.per_instance = per_instance
        self._idle: dict[str, list[psycopg.Connection]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> psycopg.Connection | None:
        """An idle connection the server still holds open, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or not dropped(conn):
                return conn
            conn.close()

    def give_back(self, key: str, conn: psycopg.Connection) -> None:
        """Keep an idle connection for the next call; its user has already reset it."""
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.per_instance:
                idle.append(conn)
                return
        conn.close()

    def close(self, key: str) -> None:
        """Drop an instance's idle connections (before a restore or a delete cuts them)."""
        with self._lock:
            idle = self._idle.pop(key, [])
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()
