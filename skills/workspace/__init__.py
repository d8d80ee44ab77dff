"""The workspace skill: persistent, size-capped filesystems that sandboxes mount and agents share."""

from __future__ import annotations

from skills.base import Op
from skills.registry import skill_from_doc
from skills.workspace import models as m
from skills.workspace import ops
from skills.workspace.limits import QUOTA
from skills.workspace.workspaces import from_platform

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "create",
            "Make a workspace: a persistent filesystem of size_mib (its cap) that sandboxes mount with "
            "workspaces=[...] and agents share; returns workspace_id.",
            m.CreateInput,
            m.CreateOutput,
            ops.create,
        ),
        Op(
            "list",
            "List your workspaces.",
            m.ListInput,
            m.ListOutput,
            ops.list_,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "describe",
            "A workspace's size used and cap, the sandboxes that mount it now, and its snapshots.",
            m.DescribeInput,
            m.DescribeOutput,
            ops.describe,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "write_file",
            "Write a file into a workspace (no sandbox needed); its directories are made as needed.",
            m.WriteFileInput,
            m.WriteFileOutput,
            ops.write_file,
            idempotent=True,
        ),
        Op(
            "read_file",
            "Read a file from a workspace (no sandbox needed).",
            m.ReadFileInput,
            m.ReadFileOutput,
            ops.read_file,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "list_files",
            "List a directory of a workspace (no sandbox needed).",
            m.ListFilesInput,
            m.ListFilesOutput,
            ops.list_files,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "snapshot",
            "Take a consistent copy of a workspace's whole content; returns snapshot_id.",
            m.SnapshotInput,
            m.SnapshotOutput,
            ops.snapshot,
            timeout_s=lambda a: 600.0,
            runs_long=lambda a: True,
        ),
        Op(
            "restore",
            "Replace a workspace's whole content with a snapshot; refused while a sandbox mounts it.",
            m.RestoreInput,
            m.RestoreOutput,
            ops.restore,
            destructive=True,
            idempotent=True,
            confirm=True,
            timeout_s=lambda a: 600.0,
            runs_long=lambda a: True,
        ),
        Op(
            "delete_snapshot",
            "Delete one snapshot of a workspace.",
            m.DeleteSnapshotInput,
            m.DeleteSnapshotOutput,
            ops.delete_snapshot,
            destructive=True,
            releases=True,
            confirm=True,
        ),
        Op(
            "delete",
            "Delete a workspace, its files and its snapshots; refused while a sandbox mounts it; deleting one "
            "already deleted succeeds.",
            m.DeleteInput,
            m.DeleteOutput,
            ops.delete,
            destructive=True,
            releases=True,
            idempotent=True,
            confirm=True,
            timeout_s=lambda a: 120.0,
        ),
    ),
    resource=from_platform,
    quota=QUOTA,
    host_bound=("workspace_id",),
)
