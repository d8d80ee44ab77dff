"""What crosses the wire for the workspace skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from skills.base import OpInput

Encoding = Literal["utf-8", "base64"]

WORKSPACE_ID = Field(description="The id workspace_create returned, e.g. 'ws_0123abcd4567ef89'.")
PATH = Field(
    min_length=1,
    max_length=1024,
    description="A file's path from the workspace's root, e.g. 'results/out.csv' ('/results/out.csv' is the same); "
    "'..' and symbolic links are refused.",
)
# The most one file op carries: what fits in one answer comfortably.
MAX_FILE_BYTES = 10 << 20


class CreateInput(OpInput):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="A name of yours for it, e.g. 'shared' (letters, digits, '_', '-', '.'), unique among yours.",
    )
    size_mib: int = Field(
        default=1024,
        ge=32,
        le=65536,
        description="Its size in MiB: the filesystem's size, so also its cap (a write past it fails with "
        "'No space left on device'); billed by the GiB-hour whether used or not.",
    )


class SnapshotOut(BaseModel):
    snapshot_id: str
    size_mib: int = Field(description="What it counts toward your quota and is billed for: its workspace's size.")
    stored_bytes: int = Field(description="The bytes the copy takes on the host.")
    created_at: str


class WorkspaceInfo(BaseModel):
    workspace_id: str
    name: str
    size_mib: int
    state: Literal["live", "stopped"] = Field(
        description="live, or stopped: the budget ran out, billing ended; files can still be read and listed, and "
        "a write, writable mount or snapshot starts billing again once the budget covers it."
    )
    created_at: str


class CreateOutput(WorkspaceInfo):
    pass


class ListInput(OpInput):
    pass


class ListOutput(BaseModel):
    workspaces: list[WorkspaceInfo]


class DescribeInput(OpInput):
    workspace_id: str = WORKSPACE_ID


class DescribeOutput(WorkspaceInfo):
    used_bytes: int = Field(description="Bytes its files (and the filesystem's own metadata) take now.")
    usable_bytes: int = Field(description="Bytes the filesystem holds in all: a little less than size_mib.")
    mounted_by: list[str] = Field(description="Sandboxes that mount it now (sandbox ids).")
    snapshots: list[SnapshotOut]


class DeleteInput(OpInput):
    workspace_id: str = WORKSPACE_ID


class DeleteOutput(BaseModel):
    workspace_id: str
    deleted: bool = Field(description="False when it was deleted already: deleting twice is fine.")


class SnapshotInput(OpInput):
    workspace_id: str = WORKSPACE_ID


class SnapshotOutput(SnapshotOut):
    workspace_id: str


class RestoreInput(OpInput):
    workspace_id: str = WORKSPACE_ID
    snapshot_id: str = Field(description="The snapshot_id workspace_snapshot returned (workspace_describe lists them).")


class RestoreOutput(BaseModel):
    workspace_id: str
    snapshot_id: str


class DeleteSnapshotInput(OpInput):
    workspace_id: str = WORKSPACE_ID
    snapshot_id: str = Field(description="The snapshot to delete (workspace_describe lists them).")


class DeleteSnapshotOutput(BaseModel):
    workspace_id: str
    snapshot_id: str


class WriteFileInput(OpInput):
    workspace_id: str = WORKSPACE_ID
    path: str = PATH
    content: str = Field(max_length=14 << 20, description="The file's content, as text or base64 (see encoding).")
    encoding: Encoding = "utf-8"


class WriteFileOutput(BaseModel):
    path: str
    size: int


class ReadFileInput(OpInput):
    workspace_id: str = WORKSPACE_ID
    path: str = PATH
    encoding: Encoding | None = Field(default=None, description="Default: utf-8 when the file is text, else base64.")
    max_bytes: int = Field(default=1 << 20, ge=1, le=MAX_FILE_BYTES, description="Bytes read at most.")


class ReadFileOutput(BaseModel):
    path: str
    size: int = Field(description="The file's whole size in bytes.")
    content: str = Field(description="The content read (at most max_bytes), as text or base64 (see encoding).")
    encoding: Encoding
    truncated: bool = Field(description="True when the file is larger than max_bytes.")


class ListFilesInput(OpInput):
    workspace_id: str = WORKSPACE_ID
    path: str = Field(default="/", max_length=1024, description="A directory from the workspace's root.")
    max_entries: int = Field(default=1000, ge=1, le=10_000, description="Entries returned at most, by name.")


class FileEntry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "link", "other"]
    size: int


class ListFilesOutput(BaseModel):
    path: str
    entries: list[FileEntry]
    truncated: bool = Field(description="True when the directory has more than max_entries entries.")
