"""The database skill's handlers."""

from __future__ import annotations

import time

import anyio

from common.errors import InvalidInput
from scheduler.tasks import TaskContext
from skills.db import csvfile
from skills.db import models as m
from skills.db.engines.base import RESULT_MAX_BYTES, Engine, Instance
from skills.db.instances import DatabaseManager, SnapshotInfo, instance_of
from skills.db.rows import Database
from skills.volumes import volumes_of

# Time a query's task gets beyond the statement's own timeout: connect, fetch, commit.
QUERY_OVERHEAD_S = 15.0
# The largest CSV file db_export writes (the rows' weight is capped at the same by the engine)...
EXPORT_MAX_BYTES = RESULT_MAX_BYTES
# ...and db_import reads (it is parsed here and sent to the engine whole).
IMPORT_MAX_BYTES = 10 << 20
WORKSPACES_NEEDED = "db_export and db_import need workspaces: use db_query instead"


def manager(ctx: TaskContext) -> DatabaseManager:
    return ctx.service(DatabaseManager)


def info(ctx: TaskContext, row: Database) -> m.DatabaseInfo:
    connection = manager(ctx).engine(row.engine).connection_string(instance_of(row)) if row.state == "running" else None
    return m.DatabaseInfo(
        db_id=row.id,
        name=row.name,
        engine=row.engine,
        size=row.size,
        state=row.state,
        storage_mib=row.storage_mib,
        connection_string=connection,
        created_at=row.created_at.isoformat(),
    )


def snapshot_out(snapshot: SnapshotInfo) -> m.SnapshotOut:
    return m.SnapshotOut(
        snapshot_id=snapshot.id, size_bytes=snapshot.size_bytes, created_at=snapshot.created_at.isoformat()
    )


async def create(ctx: TaskContext, args: m.CreateInput) -> m.CreateOutput:
    """Provision an instance; returns once it accepts connections."""
    started = time.monotonic()
    await ctx.report(0, f"provisioning a {args.size} {args.engine} database")
    row = await manager(ctx).create(ctx.tenant_id, args.engine, args.name, args.size)
    create_ms = int((time.monotonic() - started) * 1000)
    await ctx.report(1, f"{row.id} accepts connections after {create_ms} ms")
    return m.CreateOutput(**info(ctx, row).model_dump(), create_ms=create_ms)


async def list_(ctx: TaskContext, args: m.ListInput) -> m.ListOutput:
    rows = manager(ctx).list_live(ctx.tenant_id)
    return m.ListOutput(databases=[info(ctx, row) for row in rows])


async def describe(ctx: TaskContext, args: m.DescribeInput) -> m.DescribeOutput:
    databases = manager(ctx)
    row = databases.find(ctx.tenant_id, args.db_id)
    snapshots = [snapshot_out(s) for s in databases.snapshots(row.id)]
    return m.DescribeOutput(**info(ctx, row).model_dump(), snapshots=snapshots)


async def query(ctx: TaskContext, args: m.QueryInput) -> m.QueryOutput:
    """Run one statement, its parameters bound by the engine."""
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    engine = databases.engine(row.engine)
    started = time.monotonic()
    result = await anyio.to_thread.run_sync(
        engine.query, instance_of(row), args.sql, args.params, args.read_only, args.max_rows, args.timeout_s
    )
    return m.QueryOutput(
        columns=result.columns,
        rows=result.rows,
        rowcount=result.rowcount,
        truncated=result.truncated,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


async def schema(ctx: TaskContext, args: m.SchemaInput) -> m.SchemaOutput:
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    tables = await anyio.to_thread.run_sync(databases.engine(row.engine).schema, instance_of(row))
    return m.SchemaOutput(
        tables=[
            m.TableOut(
                name=t.name,
                kind=t.kind,
                columns=[m.ColumnOut(**c.__dict__) for c in t.columns],
                indexes=[m.IndexOut(**i.__dict__) for i in t.indexes],
            )
            for t in tables
        ],
    )


async def backup(ctx: TaskContext, args: m.BackupInput) -> m.BackupOutput:
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    snapshot = await databases.backup(row)
    return m.BackupOutput(**snapshot_out(snapshot).model_dump(), db_id=row.id)


async def restore(ctx: TaskContext, args: m.RestoreInput) -> m.RestoreOutput:
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    snapshot = await databases.restore(row, args.snapshot_id)
    return m.RestoreOutput(db_id=row.id, snapshot_id=snapshot.id)


async def delete(ctx: TaskContext, args: m.DeleteInput) -> m.DeleteOutput:
    """Delete an instance, its data and its snapshots; deleting it again succeeds."""
    databases = manager(ctx)
    if not databases.owns(ctx.tenant_id, args.db_id):
        databases.find(ctx.tenant_id, args.db_id)  # raises the same NotFound as any unknown id
    with anyio.CancelScope(shield=True):
        deleted = await databases.delete(args.db_id)
    return m.DeleteOutput(db_id=args.db_id, deleted=deleted)


def query_timeout(args: m.QueryInput | m.ExportInput | m.ImportInput) -> float:
    return args.timeout_s + QUERY_OVERHEAD_S


async def export(ctx: TaskContext, args: m.ExportInput) -> m.ExportOutput:
    """A read-only query's rows as a CSV file in a workspace: a header row, then the rows."""
    assert ctx.services is not None, "a task runs with the process's services"
    volumes = volumes_of(ctx.services, WORKSPACES_NEEDED)
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    engine = databases.engine(row.engine)
    started = time.monotonic()
    try:
        result = await anyio.to_thread.run_sync(
            engine.query, instance_of(row), args.sql, args.params, True, args.max_rows, args.timeout_s
        )
    except InvalidInput as exc:
        # db_query's read-only guard, worded for db_query: say it for this op.
        if exc.message.startswith("read_only is set"):
            raise InvalidInput(
                "db_export runs read-only queries, and this statement writes: export a SELECT (or WITH ... "
                "SELECT), and make changes with db_query."
            ) from exc
        raise
    if not result.columns:
        raise InvalidInput("this statement returns no rows to export: export a SELECT (or WITH ... SELECT).")
    data = csvfile.render(result.columns, result.rows)
    if len(data) > EXPORT_MAX_BYTES:
        raise InvalidInput(
            f"the CSV of these rows comes to {len(data)} bytes, more than the {EXPORT_MAX_BYTES >> 20} MiB one "
            "export may write; nothing was written. Export fewer rows (max_rows, LIMIT, WHERE) in several files."
        )
    path = await anyio.to_thread.run_sync(volumes.write_bytes, ctx.tenant_id, args.workspace_id, args.path, data)
    return m.ExportOutput(
        workspace_id=args.workspace_id,
        path=path,
        columns=result.columns,
        rows=len(result.rows),
        bytes=len(data),
        truncated=result.truncated,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


async def import_(ctx: TaskContext, args: m.ImportInput) -> m.ImportOutput:
    """A CSV file of a workspace into an existing table, all its rows or none."""
    assert ctx.services is not None, "a task runs with the process's services"
    volumes = volumes_of(ctx.services, WORKSPACES_NEEDED)
    databases = manager(ctx)
    row = await databases.get(ctx.tenant_id, args.db_id)
    engine = databases.engine(row.engine)
    started = time.monotonic()
    data = await anyio.to_thread.run_sync(
        volumes.read_bytes, ctx.tenant_id, args.workspace_id, args.path, IMPORT_MAX_BYTES
    )
    table = await anyio.to_thread.run_sync(csvfile.parse, data)
    await anyio.to_thread.run_sync(check_columns, engine, instance_of(row), args.table, table.header)
    csvfile.check_shape(table)
    count = await anyio.to_thread.run_sync(
        engine.import_rows, instance_of(row), args.table, table.header, table.rows, args.timeout_s
    )
    return m.ImportOutput(
        db_id=row.id,
        table=args.table,
        columns=table.header,
        rows=count,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


def check_columns(engine: Engine, instance: Instance, table: str, header: list[str]) -> None:
    """The header names columns of an existing table, each once."""
    tables = {t.name: t for t in engine.schema(instance) if t.kind == "table"}
    found = tables.get(table)
    if found is None:
        have = ", ".join(sorted(tables)) or "none yet"
        raise InvalidInput(
            f"there is no table {table!r} to import into (your tables: {have}): create it first with db_query "
            "(CREATE TABLE ...), then import again."
        )
    names = [c.name for c in found.columns]
    if "" in header:
        raise InvalidInput(
            f"the header row has an empty column name (column {header.index('') + 1}): name every column of "
            f"{table!r} in the first row ({', '.join(names)})."
        )
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise InvalidInput(f"the header row names {', '.join(map(repr, twice))} more than once: name each column once.")
    unknown = [h for h in header if h not in names]
    if unknown:
        raise InvalidInput(
            f"the header row names {', '.join(map(repr, unknown))}, not a column of {table!r} (its columns: "
            f"{', '.join(names)}): rename or drop that column in the file, or add it to the table, then import again."
        )
