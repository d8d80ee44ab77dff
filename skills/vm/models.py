"""What crosses the wire for the VM skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from skills.base import OpInput
from skills.commands import ExecOutput as ExecOutput  # re-exported: vm_exec's answer

FlavorName = Literal["small", "medium", "large"]
VM_ID = Field(description="The id vm_create returned, e.g. 'vm_0123abcd4567ef89'.")


class CreateInput(OpInput):
    flavor: FlavorName = Field(
        default="small",
        description="small (1 vCPU, 512 MiB, 2 GiB disk), medium (2 vCPUs, 1 GiB, 4 GiB) "
        "or large (2 vCPUs, 2 GiB, 8 GiB).",
    )
    ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600, description="Seconds until the VM is deleted.")


class SnapshotOut(BaseModel):
    snapshot_id: str
    created_at: str


class VmInfo(BaseModel):
    vm_id: str
    flavor: FlavorName
    vcpus: int
    memory_mib: int
    disk_mib: int
    state: str = Field(description="creating, starting, running, stopping, stopped or deleting.")
    accel: str | None = Field(description="kvm (hardware virtualization) or tcg (software emulation, slower).")
    ttl_s: int
    created_at: str
    expires_at: str


class CreateOutput(VmInfo):
    boot_ms: int = Field(description="Milliseconds from the call until the guest agent answered.")


class VmIdInput(OpInput):
    vm_id: str = VM_ID


class StateOutput(VmInfo):
    pass


class DescribeOutput(VmInfo):
    snapshots: list[SnapshotOut]


class ListInput(OpInput):
    pass


class ListOutput(BaseModel):
    vms: list[VmInfo]


class ExecInput(OpInput):
    vm_id: str = VM_ID
    command: str = Field(min_length=1, description="A shell command line, run by /bin/sh as root in the guest.")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Seconds before the command is killed.")
    max_output: int = Field(default=65536, ge=1, le=1 << 20, description="Bytes of stdout and of stderr kept.")


class WriteFileInput(OpInput):
    vm_id: str = VM_ID
    path: str = Field(min_length=1, description="An absolute path in the guest, e.g. /root/notes.txt.")
    content: str = Field(description="The content, as text or base64 (see encoding).")
    encoding: Literal["utf-8", "base64"] = "utf-8"


class WriteFileOutput(BaseModel):
    path: str
    size: int


class ReadFileInput(OpInput):
    vm_id: str = VM_ID
    path: str = Field(min_length=1, description="An absolute path in the guest.")
    max_bytes: int = Field(default=1 << 20, ge=1, le=16 << 20)
    encoding: Literal["utf-8", "base64"] | None = Field(
        default=None, description="utf-8 or base64; by default utf-8 when the file is text."
    )


class ReadFileOutput(BaseModel):
    path: str
    content: str
    encoding: Literal["utf-8", "base64"]
    truncated: bool


class RestoreInput(OpInput):
    vm_id: str = VM_ID
    snapshot_id: str = Field(description="The snapshot_id vm_snapshot returned (vm_describe lists them).")


class SnapshotOutput(SnapshotOut):
    vm_id: str


class DeleteOutput(BaseModel):
    vm_id: str
    deleted: bool = Field(description="False when it was already deleted: deleting twice is fine.")
