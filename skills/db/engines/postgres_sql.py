"""PostgreSQL statements as a tenant runs them: one statement per call, in its own
transaction, under its timeout, its rows streamed and bounded; and what an error
of the server means for the caller."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql as pgsql

from common.errors import InvalidInput, Timeout
from skills.db.engines.base import RESULT_MAX_BYTES, Params, QueryResult, jsonable

CANCEL_GRACE_S = 2.0

SCHEMA_COLUMNS = """
SELECT c.table_name, t.table_type, c.column_name, c.data_type, c.is_nullable = 'YES', c.column_default
FROM information_schema.columns AS c
JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = 'public'
ORDER BY c.table_name, c.ordinal_position
"""
SCHEMA_INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY tablename, indexname
"""


def weight(value: Any) -> int:
    """About what a value (as ``jsonable`` made it) weighs in an answer."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict | list):
        return len(json.dumps(value))
    return 8


def returns_rows(conn: psycopg.Connection, sql: bytes) -> bool:
    """Whether ``sql`` returns rows, as the server describes it (it must be one statement).

    Rows are streamed, so only those kept take memory here; psycopg streams only a
    statement that returns rows, and one that does not (an INSERT) must be run
    so that its row count is known."""
    parsed = conn.pgconn.prepare(b"", sql)  # the unnamed statement: the next one replaces it
    if parsed.status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(parsed, encoding=conn.info.encoding)
    return bool(conn.pgconn.describe_prepared(b"").nfields)


def statement_error(exc: psycopg.Error, read_only: bool, timeout_s: float) -> Exception:
    if isinstance(exc, psycopg.errors.ProgrammingError) and exc.sqlstate is None:
        # Refused by the client, before the server saw it: parameters that do not fit.
        return InvalidInput(
            f"the parameters do not fit the statement: {exc}. Use the placeholders $1, $2, ... "
            "with a list of params, one per placeholder."
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Timeout(
            f"the statement ran past its timeout_s of {timeout_s:g} s and was cancelled; nothing it did was kept. "
            "Give it a longer timeout_s or make it cheaper."
        )
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction) and read_only:
        return InvalidInput("read_only is set, and this statement writes: call again without read_only to write.")
    message = exc.diag.message_primary if exc.diag.message_primary else str(exc).strip()
    if isinstance(exc, psycopg.errors.OutOfMemory):
        return InvalidInput(
            f"PostgreSQL ran out of memory for this statement ({message}); nothing it did was kept. Use less "
            "memory per statement (smaller values, fewer rows at once), or make the database on a larger size."
        )
    if "multiple commands" in message:
        return InvalidInput("db_query runs one statement per call: send the statements one at a time.")
    where = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    return InvalidInput(
        f"PostgreSQL rejected the statement: {message}{where}. Fix the SQL (db_schema shows the tables) and retry."
    )


def run_statement(
    conn: psycopg.Connection, sql: str, params: Params, read_only: bool, max_rows: int, timeout_s: float
) -> QueryResult:
    """One tenant statement in its own read-only (or not) transaction, under its timeout,
    its rows streamed and bounded; the connection is left clean for the pool."""
    # Past the timeout (and a grace), cancel from here too: the server's own
    # statement_timeout is the rule, this is the guarantee.
    guard = threading.Timer(timeout_s + CANCEL_GRACE_S, conn.cancel_safe)
    guard.start()
    try:
        cursor = psycopg.RawCursor(conn)
        # Local to this transaction: the server cancels the statement itself.
        settings = ["BEGIN", *(["SET TRANSACTION READ ONLY"] if read_only else [])]
        cursor.execute("; ".join([*settings, f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"]))
        # Both ways below speak the extended protocol, which runs exactly one statement
        # per call: no "COMMIT; ..." stepping out of the transaction.
        rows: list[list[Any]] = []
        if returns_rows(conn, sql.encode()):
            size = 0
            # Row by row: only the rows kept are ever in this process's memory.
            for row in cursor.stream(sql.encode(), list(params or [])):
                if len(rows) > max_rows:
                    continue  # read to the end all the same: a write's RETURNING must not stop it
                kept = [jsonable(v) for v in row]
                size += sum(weight(v) for v in kept)
                if size > RESULT_MAX_BYTES:
                    raise InvalidInput(
                        f"the rows of this statement come to more than the {RESULT_MAX_BYTES >> 20} MiB "
                        "one answer may carry; nothing it did was kept. Ask for less: fewer rows "
                        "(max_rows, LIMIT) or parts of large values (substr())."
                    )
                rows.append(kept)
        else:
            cursor.execute(sql.encode(), list(params or []), binary=True)  # binary: the extended protocol
        columns = [c.name for c in cursor.description] if cursor.description else []
        rowcount = cursor.rowcount
        # The COMMIT and, in the same round trip, DISCARD ALL: no session state (a SET,
        # a temporary table) outlives the call on this pooled connection.
        with conn.pipeline():
            conn.execute("COMMIT")
            conn.execute("DISCARD ALL")
    finally:
        guard.cancel()
    return QueryResult(
        columns=columns,
        rows=rows[:max_rows],
        rowcount=len(rows[:max_rows]) if columns else max(rowcount, 0),
        truncated=len(rows) > max_rows,
    )


def copy_rows(
    conn: psycopg.Connection, table: str, columns: list[str], rows: list[list[str | None]], timeout_s: float
) -> int:
    """``rows`` into ``table`` by ``COPY ... FROM STDIN`` in one transaction, under its timeout;
    the connection is left clean for the pool."""
    guard = threading.Timer(timeout_s + CANCEL_GRACE_S, conn.cancel_safe)
    guard.start()
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            copy = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
                pgsql.Identifier(table), pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
            )
            with conn.cursor() as cursor, cursor.copy(copy) as writer:
                for row in rows:
                    writer.write_row(row)
        conn.execute("DISCARD ALL")
    finally:
        guard.cancel()
    return len(rows)


def copy_error(exc: psycopg.Error, timeout_s: float) -> Exception:
    """What a failed ``COPY`` means for the caller: the row it stopped at, and the server's reason."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Timeout(
            f"the import ran past its timeout_s of {timeout_s:g} s and was cancelled; nothing was imported. "
            "Give it a longer timeout_s or import a smaller file."
        )
    message = exc.diag.message_primary or str(exc).strip()
    line = re.search(r"line (\d+)", exc.diag.context or "")
    where = f"row {line.group(1)} of the file" if line else "the import"
    return InvalidInput(
        f"PostgreSQL refused {where}: {message}; nothing was imported. Fix that row (db_schema shows the table's "
        "columns and types) and import the file again."
    )
