"""Idle PostgreSQL connections kept per instance, so a query skips the connect and
the password exchange (most of a short query's time).

Every connection is in autocommit mode with server-side prepared statements
off; a query runs in its own explicit transaction followed by ``DISCARD ALL``,
and a connection goes back to the pool only idle, so no session state (SET,
temporary tables, advisory locks) leaks from one call to the next.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg
from psycopg.pq import TransactionStatus

IDLE_PER_INSTANCE = 4


class ConnectionPool:
    def __init__(self, per_instance: int = IDLE_PER_INSTANCE) -> None:
        self.per_instance = per_instance
        self._idle: dict[str, list[psycopg.Connection]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> psycopg.Connection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

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
