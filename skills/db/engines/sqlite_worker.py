"""Tenant SQL for SQLite runs here, in a child process the server keeps warm.

SQLite allocates from the heap of the process it runs in, and a statement can
hold many large values at once (a result row of 100 columns, the arguments of
a function), so no per-connection limit bounds its memory: a value cap alone
still lets ``SELECT a, a, a, ...`` over one stored blob take gigabytes. A
worker's whole address space is capped instead (``MEMORY_MAX_BYTES``); past it
SQLite fails the statement with "out of memory" and the worker answers that,
while the server's own memory (its control-plane store is SQLite too) stays
as it was.

Only the standard library is imported, so a worker starts in milliseconds
(``python -I`` with this file as its script). The server writes a request, a
length-prefixed JSON object; the worker answers one JSON object, either
``{"result": {...}}`` with rows already as JSON values, or
``{"error": code, "message": ...}`` with a code of ``common.errors``.
"""

from __future__ import annotations

import base64
import json
import resource
import sqlite3
import struct
import sys
import time
from typing import Any, BinaryIO

# The largest string or blob (and row) a tenant's statement may make or read.
VALUE_MAX_BYTES = 16 << 20
# The most a worker's address space may take: the interpreter (~20 MiB) and the statement.
MEMORY_MAX_BYTES = 256 << 20
# The most the rows of one answer may weigh (their text, and 8 bytes a number)...
# Equal to skills.db.engines.base.RESULT_MAX_BYTES (this file runs alone, importing nothing of ours).
RESULT_MAX_BYTES = 32 << 20
# ...and the answer as JSON, where escapes may make text heavier.
ANSWER_MAX_BYTES = 2 * RESULT_MAX_BYTES
# The longest statement, in bytes of UTF-8 (db_query takes at most 1,000,000 characters).
SQL_MAX_BYTES = 4 << 20
# SQLite calls the progress handler every this many virtual machine steps.
PROGRESS_STEPS = 10_000
# How long a writer waits for another writer's lock before giving up.
BUSY_TIMEOUT_S = 5.0
HEADER = struct.Struct(">Q")

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

NOT_ALLOWED = (
    "this statement is not allowed here: ATTACH, VACUUM INTO and pragmas that change how the "
    "database is stored are refused. Use plain SQL on your own tables."
)
TOO_BIG = (
    f"a value in this statement (or a row it writes) is larger than the {VALUE_MAX_BYTES >> 20} MiB a database "
    "value may be, so SQLite stopped it (string or blob too big); nothing it did was kept. Keep each value "
    "under that: split it into parts, or read a part of it with substr()."
)
OUT_OF_MEMORY = (
    f"this statement needed more than the {MEMORY_MAX_BYTES >> 20} MiB of memory a SQLite query may use, so it "
    "was stopped; nothing it did was kept. Work on less at a time: fewer or smaller values per row "
    "(substr(), length()), fewer rows at once (LIMIT)."
)
TOO_MANY_ROWS = (
    f"the rows of this statement come to more than the {RESULT_MAX_BYTES >> 20} MiB one answer may carry; "
    "nothing it did was kept. Ask for less: fewer rows (max_rows, LIMIT) or parts of large values (substr())."
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


def open_database(path: str, read_only: bool, storage_bytes: int | None) -> sqlite3.Connection:
    """A connection to a tenant's file, confined: its authorizer, its value and statement
    caps, and (when writable) its size's storage cap."""
    mode = "ro" if read_only else "rw"
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_MAX_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, SQL_MAX_BYTES)
        # Sorts and temporary tables past the page cache go to a file, not to memory.
        conn.execute("PRAGMA temp_store = FILE")
        if not read_only and storage_bytes is not None:
            # The size's storage is a hard cap: past it a write fails with "database or disk is full".
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {int(storage_bytes) // page_size}")
        conn.set_authorizer(confined)
    except BaseException:
        conn.close()
        raise
    return conn


def plain(value: Any) -> Any:
    """A SQLite value as JSON, as ``base.jsonable`` makes it: bytes as base64, infinities as text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def error(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def engine_error(exc: sqlite3.Error) -> bytes:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_TOOBIG:
        return error("invalid_input", TOO_BIG)
    if code == sqlite3.SQLITE_AUTH or "not authorized" in str(exc) or "authorization denied" in str(exc):
        return error("invalid_input", NOT_ALLOWED)
    return error(
        "invalid_input", f"SQLite rejected the statement: {exc}. Fix the SQL (db_schema shows the tables) and retry."
    )


def run(request: dict[str, Any]) -> bytes:
    """Run one statement as ``request`` says; the answer, JSON-encoded."""
    timeout_s = float(request["timeout_s"])
    read_only = bool(request["read_only"])
    max_rows = int(request["max_rows"])
    params = request["params"]
    deadline = time.monotonic() + timeout_s
    conn = open_database(request["path"], read_only, request["storage_bytes"])
    try:
        # Returning non-zero interrupts the statement with "interrupted".
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        cursor = conn.execute(request["sql"], params if params is not None else ())
        columns = [d[0] for d in cursor.description] if cursor.description else []
        rows: list[list[Any]] = []
        size = 0
        truncated = False
        if columns:
            # One row at a time, so the answer's weight is known before it is all here.
            for row in cursor:
                if len(rows) == max_rows:
                    truncated = True
                    break
                values = [plain(v) for v in row]
                size += sum(len(v) if isinstance(v, str) else 8 for v in values)
                if size > RESULT_MAX_BYTES:
                    return error("invalid_input", TOO_MANY_ROWS)
                rows.append(values)
        rowcount = len(rows) if columns else max(cursor.rowcount, 0)
        result = {"columns": columns, "rows": rows, "rowcount": rowcount, "truncated": truncated}
        answer = json.dumps({"result": result}, ensure_ascii=False).encode()
        if len(answer) > ANSWER_MAX_BYTES:  # escapes (of control characters) made it heavier
            return error("invalid_input", TOO_MANY_ROWS)
        conn.commit()
        return answer
    except sqlite3.OperationalError as exc:
        code = exc.sqlite_errorcode & 0xFF
        if code == sqlite3.SQLITE_INTERRUPT:
            return error(
                "timed_out",
                f"the statement ran past its timeout_s of {timeout_s:g} s and was cancelled; "
                "nothing it did was kept. Give it a longer timeout_s or make it cheaper.",
            )
        if read_only and code == sqlite3.SQLITE_READONLY:
            return error(
                "invalid_input", "read_only is set, and this statement writes: call again without read_only to write."
            )
        return engine_error(exc)
    except sqlite3.ProgrammingError as exc:
        return error(
            "invalid_input",
            f"SQLite could not run this: {str(exc).rstrip('.')}. Send one statement per call, with one parameter per "
            "placeholder (`?` or `:name`).",
        )
    except sqlite3.Error as exc:
        return engine_error(exc)
    except (OverflowError, UnicodeError) as exc:  # a parameter SQLite cannot take
        return error("invalid_input", f"SQLite could not take a parameter: {exc}. Pass numbers within 64 bits.")
    finally:
        # Without a commit, closing rolls back whatever the statement did.
        conn.close()


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_import(request: dict[str, Any]) -> bytes:
    """Insert ``rows`` into ``table``'s ``columns``, all in one transaction or none at all;
    the answer names the first row that fails."""
    timeout_s = float(request["timeout_s"])
    deadline = time.monotonic() + timeout_s
    columns: list[str] = request["columns"]
    statement = (
        f"INSERT INTO {quoted(request['table'])} ({', '.join(quoted(c) for c in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    conn = open_database(request["path"], False, request["storage_bytes"])
    number = 0
    try:
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        conn.execute("BEGIN IMMEDIATE")
        for row in request["rows"]:
            number += 1  # kept for the error: the row that failed
            conn.execute(statement, row)
        conn.commit()
        return json.dumps({"result": {"rowcount": number}}).encode()
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_INTERRUPT:
            return error(
                "timed_out",
                f"the import ran past its timeout_s of {timeout_s:g} s and was cancelled at row {number}; nothing "
                "was imported. Give it a longer timeout_s or import a smaller file.",
            )
        where = f"row {number} of the file" if number else "the table"
        return error(
            "invalid_input",
            f"SQLite refused {where}: {exc}; nothing was imported. Fix that row (db_schema shows the table's "
            "columns and constraints) and import the file again.",
        )
    finally:
        conn.close()  # without a commit, closing rolls the whole import back


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer requests until the server closes the pipe (it has exited, or retires this worker)."""
    while (header := read_exactly(stdin, HEADER.size)) is not None:
        body = read_exactly(stdin, HEADER.unpack(header)[0])
        if body is None:
            return
        try:
            request = json.loads(body)
            answer = run_import(request) if request.get("op") == "import" else run(request)
        except MemoryError:
            answer = error("invalid_input", OUT_OF_MEMORY)
        stdout.write(HEADER.pack(len(answer)) + answer)
        stdout.flush()


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MAX_BYTES, MEMORY_MAX_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    serve(stdin, stdout)


if __name__ == "__main__":
    main()
