"""What every database engine does, and the plain values its answers are made of."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Params = Sequence[Any] | Mapping[str, Any] | None


# The most one answer may carry, on every engine (sqlite_worker.py, which runs on its own, keeps a twin).
RESULT_MAX_BYTES = 32 << 20


@dataclass(frozen=True)
class Size:
    """What an instance of a size is given (a server engine) and billed for."""

    vcpus: float
    memory_mib: int
    storage_mib: int
    max_connections: int


SIZES = {
    "small": Size(vcpus=0.5, memory_mib=256, storage_mib=1024, max_connections=20),
    "medium": Size(vcpus=1.0, memory_mib=1024, storage_mib=10 * 1024, max_connections=50),
    "large": Size(vcpus=2.0, memory_mib=4096, storage_mib=50 * 1024, max_connections=100),
}


@dataclass(frozen=True)
class Instance:
    """A snapshot of a database's record: what an engine needs to reach it."""

    id: str
    tenant_id: str
    name: str
    engine: str
    size: str
    path: str | None = None
    container_id: str | None = None
    volume: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where a new instance was put, to record on it."""

    path: str | None = None
    container_id: str | None = None
    volume: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    rowcount: int
    truncated: bool


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    nullable: bool
    default: str | None = None


@dataclass(frozen=True)
class IndexInfo:
    name: str
    unique: bool
    definition: str


@dataclass(frozen=True)
class TableInfo:
    name: str
    kind: str  # table | view
    columns: list[ColumnInfo] = field(default_factory=list)
    indexes: list[IndexInfo] = field(default_factory=list)


class Engine(Protocol):
    """Blocking calls; the skill runs them on worker threads."""

    name: str

    def provision(self, instance: Instance, size: Size) -> Placement:
        """Create the instance and return once it accepts connections."""
        ...

    def query(
        self, instance: Instance, sql: str, params: Params, read_only: bool, max_rows: int, timeout_s: float
    ) -> QueryResult: ...

    def schema(self, instance: Instance) -> list[TableInfo]: ...

    def import_rows(
        self, instance: Instance, table: str, columns: list[str], rows: list[list[str | None]], timeout_s: float
    ) -> int:
        """Insert ``rows`` (text, or None for NULL) into ``columns`` of an existing ``table``, in one
        transaction: all of them, or none and an error naming the first row that failed."""
        ...

    def backup(self, instance: Instance, dest: Path) -> int:
        """Write a snapshot of the whole database to ``dest``; return its size in bytes."""
        ...

    def restore(self, instance: Instance, source: Path) -> None:
        """Replace the database's whole content with the snapshot at ``source``."""
        ...

    def remove(self, instance: Instance) -> None:
        """Remove everything the instance has (idempotent)."""
        ...

    def suspend(self, instance: Instance) -> None:
        """Stop serving the instance, keeping its data (its budget ran out)."""
        ...

    def resume(self, instance: Instance) -> None:
        """Serve a suspended instance again; return once it accepts connections."""
        ...

    def connection_string(self, instance: Instance) -> str: ...


def jsonable(value: Any) -> Any:
    """A value a database returned, as JSON: exact numbers as strings, bytes as base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)  # as a string: a float would lose digits a ledger cares about
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
