"""The connection to the durable store (SQLite by default, PostgreSQL for replicas).

Calls are short and synchronous. They run on the event loop: with SQLite in WAL
mode a commit takes well under a millisecond, and the thread hop would cost
more than it saves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def sqlite_driver() -> Any:
    """The DB-API module for a store whose connections load SQLite extensions: sqlean.py, the
    standard ``sqlite3`` API on a SQLite of its own (3.50) built to load them. Python's own
    module may be built without extension loading (pyenv's is), and a store should run the
    same SQLite on every machine."""
    import sqlean

    return sqlean


# The execution option that marks a read-only transaction's connection.
READS_ONLY = "cloudskills_reads_only"


def make_engine(url: str, sqlite_extensions: Sequence[str] = ()) -> Engine:
    """``sqlite_extensions``: loadable files every connection of a SQLite store loads first
    (the skills' own: sqlite-vec's vector tables), so migrations and every process see them."""
    if url.startswith("sqlite"):
        options: dict[str, Any] = {"module": sqlite_driver()} if sqlite_extensions else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            if sqlite_extensions:
                dbapi_connection.enable_load_extension(True)
                for path in sqlite_extensions:
                    dbapi_connection.load_extension(path)
                dbapi_connection.enable_load_extension(False)
            # We issue BEGIN ourselves (below), not the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            # Take the write lock when a transaction starts, so a transaction that
            # reads (a quota, a balance) and then writes can never be overtaken by
            # another process's write in between: SQLite's stand-in for the row
            # locks (SELECT ... FOR UPDATE) PostgreSQL takes. One that only reads
            # (Store.reading) takes none: WAL gives it a snapshot without waiting.
            reads_only = connection.get_execution_options().get(READS_ONLY, False)
            connection.exec_driver_sql("BEGIN" if reads_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """An engine, a session factory and the id that labels this store's resources."""

    def __init__(self, url: str, sqlite_extensions: Sequence[str] = ()) -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_extensions)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(**{READS_ONLY: True}), expire_on_commit=False)
        # Labels on containers carry this, so a reaper only touches its own.
        self.store_id = hashlib.sha256(url.encode()).hexdigest()[:12]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it takes no write lock, so it neither
        waits for a writer (another process's included) nor makes one wait; on PostgreSQL
        it is a plain transaction. Only for reads: a write in it could find that another
        wrote since its snapshot, and fail where ``transaction`` would have waited."""
        with self._reads.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
