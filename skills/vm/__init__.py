"""The VM skill: real QEMU virtual machines, driven through their guest agent."""

from __future__ import annotations

from skills.base import Op
from skills.registry import skill_from_doc
from skills.vm import models as m
from skills.vm import ops
from skills.vm.instances import QUOTA, from_platform

BOOTS = ops.BOOT_DEADLINE_S  # a boot under software emulation takes seconds

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "create",
            "Boot a VM of a flavor (default small); returns vm_id once its guest agent answers.",
            m.CreateInput,
            m.CreateOutput,
            ops.create,
            timeout_s=lambda a: BOOTS,
            runs_long=lambda a: True,
        ),
        Op("list", "List your VMs.", m.ListInput, m.ListOutput, ops.list_, read_only=True, idempotent=True),
        Op(
            "describe",
            "A VM's flavor, state, acceleration (kvm or tcg), expiry and snapshots.",
            m.VmIdInput,
            m.DescribeOutput,
            ops.describe,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "exec",
            "Run a shell command as root in a running VM; returns exit_code, stdout and stderr.",
            m.ExecInput,
            m.ExecOutput,
            ops.exec_,
            timeout_s=ops.exec_timeout,
        ),
        Op(
            "write_file",
            "Write a file in a running VM.",
            m.WriteFileInput,
            m.WriteFileOutput,
            ops.write_file,
            idempotent=True,
        ),
        Op(
            "read_file",
            "Read a file from a running VM.",
            m.ReadFileInput,
            m.ReadFileOutput,
            ops.read_file,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "stop",
            "Flush and power off a VM; its disk stays (billed for the disk only).",
            m.VmIdInput,
            m.StateOutput,
            ops.stop,
            idempotent=True,
        ),
        Op(
            "start",
            "Boot a stopped VM again.",
            m.VmIdInput,
            m.StateOutput,
            ops.start,
            timeout_s=lambda a: BOOTS,
            runs_long=lambda a: True,
        ),
        Op(
            "reboot",
            "Stop and start a running VM.",
            m.VmIdInput,
            m.StateOutput,
            ops.reboot,
            timeout_s=lambda a: BOOTS,
            runs_long=lambda a: True,
        ),
        Op(
            "snapshot",
            "Take a disk snapshot of a VM (running or stopped); returns snapshot_id.",
            m.VmIdInput,
            m.SnapshotOutput,
            ops.snapshot,
            timeout_s=lambda a: 120.0,
        ),
        Op(
            "restore",
            "Put a VM's disk back to a snapshot; a running VM is restarted on it.",
            m.RestoreInput,
            m.StateOutput,
            ops.restore,
            destructive=True,
            timeout_s=lambda a: BOOTS,
            runs_long=lambda a: True,
        ),
        Op(
            "delete",
            "Delete a VM, its disk and its snapshots; deleting one already deleted succeeds.",
            m.VmIdInput,
            m.DeleteOutput,
            ops.delete,
            destructive=True,
            releases=True,
            idempotent=True,
            confirm=True,
        ),
    ),
    resource=from_platform,
    quota=QUOTA,
    host_bound=("vm_id",),
)
