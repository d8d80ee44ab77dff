"""The workspace skill's handlers."""

from __future__ import annotations

from common.errors import InvalidInput
from scheduler.tasks import TaskContext
from skills.content import decode, encode
from skills.workspace import models as m
from skills.workspace.rows import Workspace, WorkspaceSnapshot
from skills.workspace.workspaces import WorkspaceManager


def manager(ctx: TaskContext) -> WorkspaceManager:
    return ctx.service(WorkspaceManager)


def info(row: Workspace) -> m.WorkspaceInfo:
    return m.WorkspaceInfo(
        workspace_id=row.id,
        name=row.name,
        size_mib=row.size_mib,
        state="stopped" if row.state == "stopped" else "live",
        created_at=row.created_at.isoformat(),
    )


def snapshot_out(snapshot: WorkspaceSnapshot) -> m.SnapshotOut:
    return m.SnapshotOut(
        snapshot_id=snapshot.id,
        size_mib=snapshot.size_mib,
        stored_bytes=snapshot.stored_bytes,
        created_at=snapshot.created_at.isoformat(),
    )


async def create(ctx: TaskContext, args: m.CreateInput) -> m.CreateOutput:
    row = await manager(ctx).create(ctx.tenant_id, args.name, args.size_mib)
    return m.CreateOutput(**info(row).model_dump())


async def list_(ctx: TaskContext, args: m.ListInput) -> m.ListOutput:
    return m.ListOutput(workspaces=[info(row) for row in manager(ctx).list_live(ctx.tenant_id)])


async def describe(ctx: TaskContext, args: m.DescribeInput) -> m.DescribeOutput:
    view = await manager(ctx).describe(ctx.tenant_id, args.workspace_id)
    return m.DescribeOutput(
        **info(view.row).model_dump(),
        used_bytes=view.used_bytes,
        usable_bytes=view.usable_bytes,
        mounted_by=view.mounted_by,
        snapshots=[snapshot_out(s) for s in view.snapshots],
    )


async def delete(ctx: TaskContext, args: m.DeleteInput) -> m.DeleteOutput:
    deleted = await manager(ctx).delete(ctx.tenant_id, args.workspace_id)
    return m.DeleteOutput(workspace_id=args.workspace_id, deleted=deleted)


async def snapshot(ctx: TaskContext, args: m.SnapshotInput) -> m.SnapshotOutput:
    taken = await manager(ctx).snapshot(ctx.tenant_id, args.workspace_id)
    return m.SnapshotOutput(**snapshot_out(taken).model_dump(), workspace_id=args.workspace_id)


async def restore(ctx: TaskContext, args: m.RestoreInput) -> m.RestoreOutput:
    restored = await manager(ctx).restore(ctx.tenant_id, args.workspace_id, args.snapshot_id)
    return m.RestoreOutput(workspace_id=args.workspace_id, snapshot_id=restored.id)


async def delete_snapshot(ctx: TaskContext, args: m.DeleteSnapshotInput) -> m.DeleteSnapshotOutput:
    manager(ctx).delete_snapshot(ctx.tenant_id, args.workspace_id, args.snapshot_id)
    return m.DeleteSnapshotOutput(workspace_id=args.workspace_id, snapshot_id=args.snapshot_id)


async def write_file(ctx: TaskContext, args: m.WriteFileInput) -> m.WriteFileOutput:
    data = decode(args.content, args.encoding, args.path)
    if len(data) > m.MAX_FILE_BYTES:
        raise InvalidInput(
            f"the content is {len(data)} bytes, more than the {m.MAX_FILE_BYTES} one write takes: write it in "
            "parts, or make it in a sandbox that mounts the workspace."
        )
    path = await manager(ctx).write(ctx.tenant_id, args.workspace_id, args.path, data)
    return m.WriteFileOutput(path=path, size=len(data))


async def read_file(ctx: TaskContext, args: m.ReadFileInput) -> m.ReadFileOutput:
    data, size = await manager(ctx).read(ctx.tenant_id, args.workspace_id, args.path, args.max_bytes)
    text, encoding = encode(data, args.encoding)
    path = "/" + "/".join(part for part in args.path.split("/") if part not in ("", "."))
    return m.ReadFileOutput(path=path, size=size, content=text, encoding=encoding, truncated=size > len(data))


async def list_files(ctx: TaskContext, args: m.ListFilesInput) -> m.ListFilesOutput:
    entries, truncated = await manager(ctx).list_files(ctx.tenant_id, args.workspace_id, args.path, args.max_entries)
    found = [m.FileEntry(name=e.name, path=e.path, type=e.type, size=e.size) for e in entries]
    return m.ListFilesOutput(path=args.path, entries=found, truncated=truncated)
