"""What crosses the wire for the database skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from skills.base import OpInput, Secret

EngineName = Literal["sqlite", "postgres"]
SizeName = Literal["small", "medium", "large"]

DB_ID = Field(description="The id db_create returned, e.g. 'db_0123abcd4567ef89'.")


class CreateInput(OpInput):
    engine: EngineName = Field(default="sqlite", description="sqlite (a file) or postgres (a real server).")
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description="The database's name (lowercase letters, digits, _); default: its id. Unique among yours.",
    )
    size: SizeName = Field(
        default="small",
        description="small (0.5 vCPU, 256 MiB, 1 GiB storage), medium (1 vCPU, 1 GiB, 10 GiB) "
        "or large (2 vCPU, 4 GiB, 50 GiB).",
    )


class SnapshotOut(BaseModel):
    snapshot_id: str
    size_bytes: int
    created_at: str


class DatabaseInfo(BaseModel):
    db_id: str
    name: str
    engine: EngineName
    size: SizeName
    state: str = Field(description="creating, running, suspended (the budget ran out; the data is kept) or deleting.")
    storage_mib: int = Field(description="The storage the instance is billed for.")
    connection_string: Annotated[str | None, Secret()] = Field(
        description="How to connect yourself: a postgresql:// URL with your own user and password "
        "(on this host's 127.0.0.1), or the sqlite file's path."
    )
    created_at: str


class CreateOutput(DatabaseInfo):
    create_ms: int = Field(description="Milliseconds until the instance accepted connections.")


class DescribeInput(OpInput):
    db_id: str = DB_ID


class DescribeOutput(DatabaseInfo):
    snapshots: list[SnapshotOut]


class ListInput(OpInput):
    pass


class ListOutput(BaseModel):
    databases: list[DatabaseInfo]


class QueryInput(OpInput):
    db_id: str = DB_ID
    sql: str = Field(min_length=1, max_length=1_000_000, description="One SQL statement.")
    params: list[Any] | dict[str, Any] | None = Field(
        default=None,
        description="Values bound to the statement's placeholders, never pasted into the SQL: "
        "a list for `?` (sqlite) or `$1, $2, ...` (postgres), or an object for `:name` (sqlite).",
    )
    read_only: bool = Field(default=False, description="Refuse any write: the engine itself rejects it.")
    max_rows: int = Field(default=1000, ge=1, le=100_000, description="Rows returned at most; truncated says so.")
    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Seconds the statement may run before cancel.")


class QueryOutput(BaseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(description="Rows as lists in column order; exact numbers as strings.")
    rowcount: int = Field(description="Rows returned, or rows changed by a write.")
    truncated: bool = Field(description="True when there were more than max_rows rows.")
    duration_ms: int


class SchemaInput(OpInput):
    db_id: str = DB_ID


class ColumnOut(BaseModel):
    name: str
    type: str
    nullable: bool
    default: str | None


class IndexOut(BaseModel):
    name: str
    unique: bool
    definition: str


class TableOut(BaseModel):
    name: str
    kind: Literal["table", "view"]
    columns: list[ColumnOut]
    indexes: list[IndexOut]


class SchemaOutput(BaseModel):
    tables: list[TableOut]


class BackupInput(OpInput):
    db_id: str = DB_ID


class BackupOutput(SnapshotOut):
    db_id: str


class RestoreInput(OpInput):
    db_id: str = DB_ID
    snapshot_id: str = Field(description="The snapshot_id db_backup returned (db_describe lists them).")


class RestoreOutput(BaseModel):
    db_id: str
    snapshot_id: str


class DeleteInput(OpInput):
    db_id: str = DB_ID


class DeleteOutput(BaseModel):
    db_id: str
    deleted: bool = Field(description="False when it was already deleted: deleting twice is fine.")


WORKSPACE_ID = Field(description="The id workspace_create returned, e.g. 'ws_0123abcd4567ef89'.")


class ExportInput(OpInput):
    db_id: str = DB_ID
    sql: str = Field(
        min_length=1, max_length=1_000_000, description="One read-only statement (SELECT, WITH ... SELECT)."
    )
    params: list[Any] | dict[str, Any] | None = Field(
        default=None, description="Values bound to the statement's placeholders, as for db_query."
    )
    workspace_id: str = WORKSPACE_ID
    path: str = Field(
        min_length=1, max_length=1024, description="The CSV file to write in the workspace, e.g. 'out/items.csv'."
    )
    max_rows: int = Field(
        default=100_000, ge=1, le=1_000_000, description="Rows written at most; truncated says when there were more."
    )
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Seconds the query may run before cancel.")


class ExportOutput(BaseModel):
    workspace_id: str
    path: str = Field(description="The file written, from the workspace's root.")
    columns: list[str]
    rows: int = Field(description="Data rows written (the header row not counted).")
    bytes: int = Field(description="The file's size.")
    truncated: bool = Field(description="True when the query had more than max_rows rows.")
    duration_ms: int


class ImportInput(OpInput):
    db_id: str = DB_ID
    workspace_id: str = WORKSPACE_ID
    path: str = Field(min_length=1, max_length=1024, description="The CSV file in the workspace, e.g. 'in/items.csv'.")
    table: str = Field(
        min_length=1, max_length=128, description="An existing table; the file's header names its columns."
    )
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Seconds the import may run before cancel.")


class ImportOutput(BaseModel):
    db_id: str
    table: str
    columns: list[str] = Field(description="The columns filled, from the file's header.")
    rows: int = Field(description="Rows inserted: every row of the file, or the call fails and none are.")
    duration_ms: int
