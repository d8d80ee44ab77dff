"""SQLite: one database file per instance in the data dir (the embedded default).

There is no server. A tenant's statement runs in a worker process
(``sqlite_worker``) whose memory is capped, so no statement can take the
server's: the worker opens the file, runs the statement and closes it. A
statement past its timeout is interrupted by SQLite's progress handler, and a
worker that still does not answer is killed; ``read_only`` opens the file
read-only, so SQLite itself refuses writes. Schemas, backups and restores run
our own SQL, here, on a connection confined the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import BackendUnavailable, InvalidInput, NotFound, Timeout, error_from_code
from skills.db.engines import sqlite_worker
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
)
from skills.db.engines.sqlite_worker import ANSWER_MAX_BYTES, HEADER, open_database

log = logging.getLogger("cloudskills.databases")

# Statements that may run at once; more wait for a worker. Each worker may take
# sqlite_worker.MEMORY_MAX_BYTES, so this bounds what tenant SQL takes in all.
WORKERS_MAX = 8
# Time a worker gets past the statement's own timeout to answer: open, fetch, commit.
ANSWER_GRACE_S = 5.0
# All a worker keeps of the server's environment: no secret is within reach of tenant SQL.
WORKER_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SQLITE_TMPDIR")


class WorkerGone(Exception):
    """A worker exited, or stopped answering, in the middle of a statement."""


class Worker:
    """One ``sqlite_worker`` process, running one statement at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", sqlite_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={name: os.environ[name] for name in WORKER_ENV if name in os.environ},
            # Its own session: a Ctrl-C in the server's terminal is the server's to handle;
            # a worker ends when the server closes its pipe.
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ask(self, request: bytes, deadline: float) -> bytes:
        """Send one request; its answer, or ``WorkerGone`` (then close this worker)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(HEADER.pack(len(request)) + request)
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerGone("it had exited") from exc
        (size,) = HEADER.unpack(self._read(HEADER.size, deadline))
        if size > ANSWER_MAX_BYTES:
            raise WorkerGone(f"it sent an answer of {size} bytes")
        return self._read(size, deadline)

    def _read(self, size: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks = []
        while size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                raise WorkerGone("it exited")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> str:
        """Stop the worker; how it ended, for a message (what it said goes to the server's log)."""
        if self.alive:
            self.process.kill()
        code = self.process.wait()
        assert self.process.stderr is not None
        said = self.process.stderr.read()[-2000:].decode(errors="replace").strip()
        if said:
            log.warning("a SQLite worker ended (exit status %s) saying: %s", code, said)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        return f"exit status {code}"


class WorkerPool:
    """Warm workers, shared by every SQLite database of this process; at most ``size`` busy."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Worker] = []
        self._lock = threading.Lock()

    def run(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run a statement's request on a worker; the worker's answer."""
        try:
            body = json.dumps(request).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the params are not plain JSON values ({exc}): pass numbers, text or null.") from exc
        if not self._slots.acquire(timeout=timeout_s):
            raise BackendUnavailable(
                f"all {self.size} SQLite workers of the server stayed busy for this statement's timeout_s of "
                f"{timeout_s:g} s: try again in a moment."
            )
        try:
            worker = self._take()
            try:
                answer = worker.ask(body, time.monotonic() + timeout_s + ANSWER_GRACE_S)
            except TimeoutError as exc:
                worker.close()
                raise Timeout(
                    f"the statement ran past its timeout_s of {timeout_s:g} s and was cancelled; nothing it did "
                    "was kept. Give it a longer timeout_s or make it cheaper."
                ) from exc
            except WorkerGone as exc:
                raise BackendUnavailable(
                    f"the process running this statement died ({exc}; {worker.close()}) before it answered: "
                    "try again, and if it happens again, simplify the statement."
                ) from exc
            except BaseException:
                worker.close()
                raise
            self._give_back(worker)
        finally:
            self._slots.release()
        decoded: dict[str, Any] = json.loads(answer)
        return decoded

    def _take(self) -> Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                worker.close()
        return Worker()

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            self._idle.append(worker)


WORKERS = WorkerPool(WORKERS_MAX)


class SqliteEngine:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file(self, instance: Instance) -> Path:
        """The instance's file; NotFound if it is gone."""
        assert instance.path is not None
        path = Path(instance.path)
        if not path.exists():
            raise NotFound(f"the file of database {instance.id!r} is gone: delete it with db_delete.")
        return path

    def storage_bytes(self, instance: Instance) -> int | None:
        return SIZES[instance.size].storage_mib << 20 if instance.size in SIZES else None

    @contextlib.contextmanager
    def connect(self, instance: Instance, read_only: bool = False) -> Iterator[sqlite3.Connection]:
        conn = open_database(str(self.file(instance)), read_only, self.storage_bytes(instance))
        try:
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
        request = {
            "path": str(self.file(instance)),
            "storage_bytes": self.storage_bytes(instance),
            "sql": sql,
            "params": params,
            "read_only": read_only,
            "max_rows": max_rows,
            "timeout_s": timeout_s,
        }
        answer = WORKERS.run(request, timeout_s)
        if "error" in answer:
            raise error_from_code(answer["error"], answer["message"])
        result = answer["result"]
        return QueryResult(
            columns=result["columns"], rows=result["rows"], rowcount=result["rowcount"], truncated=result["truncated"]
        )

    def import_rows(
        self, instance: Instance, table: str, columns: list[str], rows: list[list[str | None]], timeout_s: float
    ) -> int:
        request = {
            "op": "import",
            "path": str(self.file(instance)),
            "storage_bytes": self.storage_bytes(instance),
            "table": table,
            "columns": columns,
            "rows": rows,
            "timeout_s": timeout_s,
        }
        answer = WORKERS.run(request, timeout_s)
        if "error" in answer:
            raise error_from_code(answer["error"], answer["message"])
        return int(answer["result"]["rowcount"])

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

    def suspend(self, instance: Instance) -> None:
        """Nothing runs for a SQLite file: the manager refuses its use while suspended."""

    def resume(self, instance: Instance) -> None:
        """Nothing to start: the file is there."""

    def connection_string(self, instance: Instance) -> str:
        return f"sqlite:///{instance.path}"
