"""The VM skill through the MCP client, on real QEMU virtual machines."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from runtime.app import App
from sandbox.qemu import FLAVORS, marker
from scheduler.models import LedgerEntry
from skills.vm.instances import VmManager
from skills.vm.rows import Vm
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_the_whole_life_of_a_vm(app: App) -> None:
    async with mcp_client(app) as client:
        created = await call(client, "vm_create")
        vm = created["vm_id"]
        assert created["state"] == "running" and created["flavor"] == "small"
        assert created["accel"] in ("kvm", "tcg")

        uname = await call(client, "vm_exec", vm_id=vm, command="uname -a")
        assert uname["exit_code"] == 0 and uname["stdout"].startswith("Linux cloudskills-vm")
        failing = await call(client, "vm_exec", vm_id=vm, command="echo oops >&2; exit 3")
        assert failing["exit_code"] == 3 and failing["stderr"] == "oops\n"
        slow = await call_error(client, "vm_exec", vm_id=vm, command="sleep 30", timeout_s=1)
        assert "timeout_s of 1 s and was killed" in slow
        missing = await call_error(client, "vm_read_file", vm_id=vm, path="/root/nope.txt")
        assert "no file" in missing

        await call(client, "vm_write_file", vm_id=vm, path="/root/state.txt", content="first")
        stopped = await call(client, "vm_stop", vm_id=vm)
        assert stopped["state"] == "stopped"
        refused = await call_error(client, "vm_exec", vm_id=vm, command="true")
        assert "is stopped: start it with vm_start" in refused

        assert (await call(client, "vm_start", vm_id=vm))["state"] == "running"
        kept = await call(client, "vm_read_file", vm_id=vm, path="/root/state.txt")
        assert kept["content"] == "first"

        snapshot = await call(client, "vm_snapshot", vm_id=vm)
        await call(client, "vm_write_file", vm_id=vm, path="/root/state.txt", content="second")
        changed = await call(client, "vm_exec", vm_id=vm, command="cat /root/state.txt")
        assert changed["stdout"] == "second"
        restored = await call(client, "vm_restore", vm_id=vm, snapshot_id=snapshot["snapshot_id"])
        assert restored["state"] == "running"
        back = await call(client, "vm_read_file", vm_id=vm, path="/root/state.txt")
        assert back["content"] == "first"

        described = await call(client, "vm_describe", vm_id=vm)
        assert [s["snapshot_id"] for s in described["snapshots"]] == [snapshot["snapshot_id"]]
        assert [v["vm_id"] for v in (await call(client, "vm_list"))["vms"]] == [vm]

        assert (await call(client, "vm_delete", vm_id=vm))["deleted"] is True
        assert (await call(client, "vm_delete", vm_id=vm))["deleted"] is False
        gone = await call_error(client, "vm_exec", vm_id=vm, command="true")
        assert "was deleted" in gone

    assert vm not in app.service(VmManager).driver.processes(), "a QEMU process outlived its VM"
    assert not await anyio.Path(app.settings.home / "vms" / vm).exists(), "the VM's disk was left behind"
    with app.store.transaction() as session:
        row = session.get(Vm, vm)
        assert row is not None and row.deleted_at is not None
        billed = dict(
            session.execute(
                select(LedgerEntry.item, func.sum(LedgerEntry.quantity))
                .where(LedgerEntry.skill == "vm", LedgerEntry.task_id.is_(None))
                .group_by(LedgerEntry.item)
            ).all()
        )
        lifetime_ms = (row.deleted_at - row.created_at).total_seconds() * 1000
    # The disk is billed for the whole life, vCPUs only while it ran (not while stopped).
    disk_ms = billed["vm.disk_mib_ms"] / FLAVORS["small"].disk_mib
    assert abs(disk_ms - lifetime_ms) < 1000
    assert 0 < billed["vm.vcpu_ms"] < disk_ms


async def test_bad_input_gets_clear_errors(app: App) -> None:
    async with mcp_client(app) as client:
        flavor = await call_error(client, "vm_create", flavor="huge")
        assert "flavor" in flavor
        ttl = await call_error(client, "vm_create", ttl_s=5)
        assert "ttl_s" in ttl
        unknown = await call_error(client, "vm_exec", vm_id="vm_ffffffffffffffff", command="true")
        assert "no VM" in unknown
    with app.store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Vm)) == 0


async def test_the_reaper_kills_a_qemu_process_with_no_record(app: App) -> None:
    driver = app.service(VmManager).driver
    folder = Path(driver.folder("vm_0000000000000000"))
    driver.create("vm_0000000000000000", FLAVORS["small"])
    driver._launch(folder, marker(driver.store_id, "vm_0000000000000000"), FLAVORS["small"], "tcg")
    assert "vm_0000000000000000" in driver.processes()
    reaped = await app.service(VmManager).reap()
    assert "vm_0000000000000000" in reaped
    for _ in range(100):
        if "vm_0000000000000000" not in driver.processes():
            break
        await anyio.sleep(0.05)
    assert "vm_0000000000000000" not in driver.processes()
    driver.delete("vm_0000000000000000")
