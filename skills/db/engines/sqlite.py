"""SQLite: one database file per instance in the data dir (the embedded default).

There is no server: a query opens the file, runs on a worker thread, and
closes it. A statement past its timeout is interrupted by SQLite's progress
handler; ``read_only`` opens the file read-only, so SQLite itself refuses writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from scheduler.errors import InvalidInput, NotFound, Timeout
from skills.db.engines.base import (
    SIZES,
    ColumnInfo,
    IndexInfo,
    Instance,
    Params,
    Placement,
    QueryResult,
    Size,
    TableInfo,
    jsonable,
)

# SQLite calls the progress handler every this many virtual machine steps.
PROGRESS_STEPS = 10_000
# How long a writer waits for another writer's lock before giving up.
BUSY_TIMEOUT_S = 5.0


# Pragmas a tenant's SQL may use. Introspection takes any argument (a table's
# name); a few values may only be read, since setting them would lift the
# storage cap (max_page_count, page_size); a few harmless ones may be set. The
# others could corrupt the file (writable_schema) or change how it is kept.
INTROSPECTION_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "collation_list",
        "function_list",
        "pragma_list",
    }
)
READ_ONLY_PRAGMAS = frozenset(
    {"page_count", "page_size", "max_page_count", "freelist_count", "encoding", "data_version"}
)
SETTABLE_PRAGMAS = frozenset(
    {"foreign_keys", "defer_foreign_keys", "recursive_triggers", "user_version", "application_id"}
)


def confined(action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None) -> int:
    """SQLite's authorizer for tenant SQL: no other file (ATTACH, VACUUM INTO), no pragma
    that could lift the storage cap or damage the file."""
    if action == sqlite3.SQLITE_ATTACH:
        # VACUUM attaches a nameless temporary database; any named file is another file.
        return sqlite3.SQLITE_OK if not arg1 else sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_DETACH:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        allowed = (
            name in INTROSPECTION_PRAGMAS or name in SETTABLE_PRAGMAS or (name in READ_ONLY_PRAGMAS and arg2 is None)
        )
        return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def engine_error(exc: sqlite3.Error) -> InvalidInput:
    if "not authorized" in str(exc) or "authorization denied" in str(exc):
        return InvalidInput(
            "this statement is not allowed here: ATTACH, VACUUM INTO and pragmas that change how the "
            "database is stored are refused. Use plain SQL on your own tables."
        )
    return InvalidInput(f"SQLite rejected the statement: {exc}. Fix the SQL (db_schema shows the tables) and retry.")


class SqliteEngine:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file(self, instance: Instance) -> Path:
        assert instance.path is not None
        return Path(instance.path)

    @contextlib.contextmanager
    def connect(self, instance: Instance, read_only: bool = False) -> Iterator[sqlite3.Connection]:
        path = self.file(instance)
        if not path.exists():
            raise NotFound(f"the file of database {instance.id!r} is gone: delete it with db_delete.")
        mode = "ro" if read_only else "rw"
        conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            if not read_only and instance.size in SIZES:
                # The size's storage is a hard cap: past it a write fails with "database or disk is full".
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {SIZES[instance.size].storage_mib * 1024 * 1024 // page_size}")
            conn.set_authorizer(confined)
            yield conn
        finally:
            conn.close()

    def provision(self, instance: Instance, size: Size) -> Placement:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{instance.id}.sqlite3"
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        return Placement(path=str(path))

    def query(
        self, instance: Instance, sql: str, params: Params, read_only: bool, max_rows: int, timeout_s: float
    ) -> QueryResult:
        deadline = time.monotonic() + timeout_s
        with self.connect(instance, read_only) as conn:
            # Returning non-zero interrupts the statement with "interrupted".
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
            try:
                cursor = conn.execute(sql, params if params is not None else ())
                rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
                conn.commit()
            except sqlite3.OperationalError as exc:
                if "interrupted" in str(exc):
                    raise Timeout(
                        f"the statement ran past its timeout_s of {timeout_s:g} s and was cancelled; "
                        "nothing it did was kept. Give it a longer timeout_s or make it cheaper."
                    ) from exc
                if read_only and "readonly" in str(exc).replace(" ", "").lower():
                    raise InvalidInput(
                        "read_only is set, and this statement writes: call again without read_only to write."
                    ) from exc
                raise engine_error(exc) from exc
            except sqlite3.ProgrammingError as exc:
                raise InvalidInput(
                    f"SQLite could not run this: {exc}. Send one statement per call, with one parameter per "
                    "placeholder (`?` or `:name`)."
                ) from exc
            except sqlite3.Error as exc:
                raise engine_error(exc) from exc
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return QueryResult(
            columns=columns,
            rows=[[jsonable(v) for v in row] for row in rows[:max_rows]],
            rowcount=len(rows[:max_rows]) if cursor.description else max(cursor.rowcount, 0),
            truncated=len(rows) > max_rows,
        )

    def schema(self, instance: Instance) -> list[TableInfo]:
        with self.connect(instance, read_only=True) as conn:
            objects = conn.execute(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
            tables = []
            for name, kind in objects:
                columns = [
                    ColumnInfo(name=c[1], type=c[2] or "", nullable=not c[3] and not c[5], default=c[4])
                    for c in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))
                ]
                indexes = [
                    IndexInfo(name=i[0], unique=bool(i[1]), definition=i[2] or "")
                    for i in conn.execute(
                        'SELECT l.name, l."unique", m.sql FROM pragma_index_list(?) AS l '
                        "LEFT JOIN sqlite_master AS m ON m.name = l.name ORDER BY l.name",
                        (name,),
                    )
                ]
                tables.append(TableInfo(name=name, kind=kind, columns=columns, indexes=indexes))
            return tables

    def backup(self, instance: Instance, dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.connect(instance, read_only=True) as conn:
            target = sqlite3.connect(dest)
            try:
                conn.backup(target)
            finally:
                target.close()
        return dest.stat().st_size

    def restore(self, instance: Instance, source: Path) -> None:
        snapshot = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            with self.connect(instance) as conn:
                # The backup API copies every page: the file becomes the snapshot.
                snapshot.backup(conn)
        finally:
            snapshot.close()

    def remove(self, instance: Instance) -> None:
        if instance.path is None:
            return
        for suffix in ("", "-wal", "-shm"):
            Path(instance.path + suffix).unlink(missing_ok=True)

    def connection_string(self, instance: Instance) -> str:
        return f"sqlite:///{instance.path}"
