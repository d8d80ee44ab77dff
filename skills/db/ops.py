"""The database skill's handlers."""

from __future__ import annotations

import time

import anyio

from scheduler.tasks import TaskContext
from skills.db import models as m
from skills.db.instances import DatabaseManager, SnapshotInfo, instance_of
from skills.db.rows import Database

# Time a query's task gets beyond the statement's own timeout: connect, fetch, commit.
QUERY_OVERHEAD_S = 15.0


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


def query_timeout(args: m.QueryInput) -> float:
    return args.timeout_s + QUERY_OVERHEAD_S
