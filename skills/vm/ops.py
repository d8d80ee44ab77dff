"""The VM skill's handlers."""

from __future__ import annotations

import time
from datetime import timedelta

import anyio

from scheduler.tasks import TaskContext
from skills.commands import command_timed_out
from skills.content import decode, encode
from skills.vm import models as m
from skills.vm.instances import VmManager
from skills.vm.rows import Vm

# Beyond a command's own timeout: the agent's round trips.
EXEC_OVERHEAD_S = 30.0
BOOT_DEADLINE_S = 180.0


def manager(ctx: TaskContext) -> VmManager:
    return ctx.service(VmManager)


def info(row: Vm) -> m.VmInfo:
    return m.VmInfo(
        vm_id=row.id,
        flavor=row.flavor,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        state=row.state,
        accel=row.accel,
        ttl_s=row.ttl_s,
        created_at=row.created_at.isoformat(),
        expires_at=(row.created_at + timedelta(seconds=row.ttl_s)).isoformat(),
    )


async def create(ctx: TaskContext, args: m.CreateInput) -> m.CreateOutput:
    """Boot a VM; returns once its guest agent answers."""
    started = time.monotonic()
    accel = await anyio.to_thread.run_sync(manager(ctx).driver.accel)  # probed once, by a boot
    await ctx.report(0, f"booting a {args.flavor} VM ({accel})")
    row = await manager(ctx).create(ctx.tenant_id, args.flavor, args.ttl_s)
    boot_ms = int((time.monotonic() - started) * 1000)
    await ctx.report(1, f"{row.id} answered after {boot_ms} ms")
    return m.CreateOutput(**info(row).model_dump(), boot_ms=boot_ms)


async def list_(ctx: TaskContext, args: m.ListInput) -> m.ListOutput:
    return m.ListOutput(vms=[info(r) for r in manager(ctx).list_live(ctx.tenant_id)])


async def describe(ctx: TaskContext, args: m.VmIdInput) -> m.DescribeOutput:
    vms = manager(ctx)
    row = vms.get(ctx.tenant_id, args.vm_id)
    snapshots = [m.SnapshotOut(snapshot_id=s.id, created_at=s.created_at.isoformat()) for s in vms.snapshots(row.id)]
    return m.DescribeOutput(**info(row).model_dump(), snapshots=snapshots)


async def exec_(ctx: TaskContext, args: m.ExecInput) -> m.ExecOutput:
    """Run a shell command in the guest through its agent."""
    vms = manager(ctx)
    row = vms.running(ctx.tenant_id, args.vm_id)
    result = await anyio.to_thread.run_sync(vms.driver.exec, row.id, args.command, args.timeout_s, args.max_output + 1)
    stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    if result.timed_out:
        raise command_timed_out(args.timeout_s, stdout, stderr)
    return m.ExecOutput(
        exit_code=result.exit_code,
        stdout=stdout[: args.max_output],
        stderr=stderr[: args.max_output],
        stdout_truncated=len(result.stdout) > args.max_output,
        stderr_truncated=len(result.stderr) > args.max_output,
        duration_ms=result.duration_ms,
    )


async def write_file(ctx: TaskContext, args: m.WriteFileInput) -> m.WriteFileOutput:
    vms = manager(ctx)
    row = vms.running(ctx.tenant_id, args.vm_id)
    data = decode(args.content, args.encoding, args.path)
    await anyio.to_thread.run_sync(vms.driver.write_file, row.id, args.path, data)
    return m.WriteFileOutput(path=args.path, size=len(data))


async def read_file(ctx: TaskContext, args: m.ReadFileInput) -> m.ReadFileOutput:
    vms = manager(ctx)
    row = vms.running(ctx.tenant_id, args.vm_id)
    data, truncated = await anyio.to_thread.run_sync(vms.driver.read_file, row.id, args.path, args.max_bytes)
    content, encoding = encode(data, args.encoding)
    return m.ReadFileOutput(path=args.path, content=content, encoding=encoding, truncated=truncated)


async def stop(ctx: TaskContext, args: m.VmIdInput) -> m.StateOutput:
    """Flush the guest's disk and power it off; a stopped VM is billed for its disk only."""
    vms = manager(ctx)
    row = vms.get(ctx.tenant_id, args.vm_id)
    with anyio.CancelScope(shield=True):
        stopped = await vms.stop(row.id)
    return m.StateOutput(**info(stopped).model_dump())


async def start(ctx: TaskContext, args: m.VmIdInput) -> m.StateOutput:
    vms = manager(ctx)
    row = vms.get(ctx.tenant_id, args.vm_id)
    if row.state == "running":
        return m.StateOutput(**info(row).model_dump())
    await ctx.report(0, f"booting {row.id}")
    started = await vms.start(row.id)
    await ctx.report(1, f"{row.id} answered")
    return m.StateOutput(**info(started).model_dump())


async def reboot(ctx: TaskContext, args: m.VmIdInput) -> m.StateOutput:
    vms = manager(ctx)
    row = vms.running(ctx.tenant_id, args.vm_id)
    with anyio.CancelScope(shield=True):
        await vms.stop(row.id)
    started = await vms.start(row.id)
    return m.StateOutput(**info(started).model_dump())


async def snapshot(ctx: TaskContext, args: m.VmIdInput) -> m.SnapshotOutput:
    """A disk snapshot, taken running (after a sync) or stopped."""
    vms = manager(ctx)
    row = vms.get(ctx.tenant_id, args.vm_id)
    taken = await vms.snapshot(row)
    return m.SnapshotOutput(snapshot_id=taken.id, created_at=taken.created_at.isoformat(), vm_id=row.id)


async def restore(ctx: TaskContext, args: m.RestoreInput) -> m.StateOutput:
    vms = manager(ctx)
    row = vms.get(ctx.tenant_id, args.vm_id)
    restored = await vms.restore(row, args.snapshot_id)
    return m.StateOutput(**info(restored).model_dump())


async def delete(ctx: TaskContext, args: m.VmIdInput) -> m.DeleteOutput:
    """Kill the VM and remove its disk and snapshots; deleting it again succeeds."""
    vms = manager(ctx)
    if not vms.owns(ctx.tenant_id, args.vm_id):
        vms.get(ctx.tenant_id, args.vm_id)  # the same NotFound as any unknown id
    with anyio.CancelScope(shield=True):
        deleted = await vms.delete(args.vm_id, "deleted_by_owner")
    return m.DeleteOutput(vm_id=args.vm_id, deleted=deleted)


def exec_timeout(args: m.ExecInput) -> float:
    return args.timeout_s + EXEC_OVERHEAD_S
