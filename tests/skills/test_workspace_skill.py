"""The workspace skill through the MCP client, on real loop-mounted ext4 and real sandboxes:
files without a sandbox, mounts shared by sandboxes (read-only ones too), the size cap as the
kernel enforces it, snapshots, isolation, billing, and nothing left on the host after a delete."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.tenants import ensure_tenant
from scheduler.models import Lease
from skills.workspace.workspaces import WorkspaceManager
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def host_paths(app: App, workspace_id: str) -> tuple[Path, Path]:
    disks = app.service(WorkspaceManager).disks
    return disks.image(workspace_id), disks.mount_point(workspace_id)


def loop_devices_of(image: Path) -> list[str]:
    listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    return [line for line in listed.splitlines() if line.strip()]


def lease_of(app: App, resource_id: str) -> Lease | None:
    with app.store.transaction() as session:
        return session.scalar(select(Lease).where(Lease.id == resource_id))


async def test_files_without_a_sandbox_billing_and_a_delete_that_leaves_nothing(app: App) -> None:
    async with mcp_client(app) as client:
        made = await call(client, "workspace_create", name="shared", size_mib=64)
        ws = made["workspace_id"]
        image, mount_point = host_paths(app, ws)
        assert mount_point.is_mount() and loop_devices_of(image)
        assert mount_point.stat().st_uid == 1000, "the sandbox user owns its root"
        written = await call(client, "workspace_write_file", workspace_id=ws, path="notes/a.txt", content="hello\n")
        binary = await call(
            client, "workspace_write_file", workspace_id=ws, path="/notes/b.bin", content="AAEC", encoding="base64"
        )
        text = await call(client, "workspace_read_file", workspace_id=ws, path="notes/a.txt")
        raw = await call(client, "workspace_read_file", workspace_id=ws, path="notes/b.bin")
        cut = await call(client, "workspace_read_file", workspace_id=ws, path="notes/a.txt", max_bytes=2)
        listed = await call(client, "workspace_list_files", workspace_id=ws, path="notes")
        described = await call(client, "workspace_describe", workspace_id=ws)
        escape = await call_error(client, "workspace_read_file", workspace_id=ws, path="../../etc/passwd")
        missing = await call_error(client, "workspace_read_file", workspace_id=ws, path="nothing.txt")
        twice = await call_error(client, "workspace_create", name="shared", size_mib=64)
        lease = lease_of(app, ws)
        assert lease is not None and lease.rate == {"workspace.storage_mib_ms": 64 * 1000} and lease.ended_at is None
        assert [w["workspace_id"] for w in (await call(client, "workspace_list"))["workspaces"]] == [ws]
        deleted = await call(client, "workspace_delete", workspace_id=ws)
        again = await call(client, "workspace_delete", workspace_id=ws)
        gone = await call_error(client, "workspace_describe", workspace_id=ws)
    assert written == {**written, "path": "/notes/a.txt", "size": 6} and binary["size"] == 3
    assert (text["content"], text["encoding"], text["truncated"]) == ("hello\n", "utf-8", False)
    assert (raw["content"], raw["encoding"]) == ("AAEC", "base64")
    assert (cut["content"], cut["size"], cut["truncated"]) == ("he", 6, True)
    assert [(e["name"], e["type"], e["size"]) for e in listed["entries"]] == [
        ("a.txt", "file", 6),
        ("b.bin", "file", 3),
    ]
    assert described["size_mib"] == 64 and 0 < described["used_bytes"] < described["usable_bytes"] <= 64 << 20
    assert described["mounted_by"] == [] and described["snapshots"] == []
    assert "'..'" in escape and "workspace_list_files" in missing and "already have a workspace named" in twice
    assert deleted["deleted"] and not again["deleted"] and "workspace_list" in gone
    ended = lease_of(app, ws)
    assert ended is not None and ended.ended_at is not None and ended.end_reason == "deleted"
    assert not image.exists() and not mount_point.exists() and not loop_devices_of(image)


async def test_sandboxes_share_a_workspace_one_writing_while_another_reads(app: App) -> None:
    async with mcp_client(app) as client:
        ws = (await call(client, "workspace_create", name="shared", size_mib=64))["workspace_id"]
        await call(client, "workspace_write_file", workspace_id=ws, path="in.txt", content="from the host\n")
        mount = {"workspace_id": ws, "path": "/mnt/shared"}
        writer = await call(client, "sandbox_create", template="bash", workspaces=[mount])
        reader = await call(client, "sandbox_create", template="bash", workspaces=[{**mount, "read_only": True}])
        seen = await call(client, "sandbox_exec", sandbox_id=writer["sandbox_id"], command="cat /mnt/shared/in.txt")
        owner = await call(client, "sandbox_exec", sandbox_id=writer["sandbox_id"], command="stat -c %u /mnt/shared")
        described = await call(client, "workspace_describe", workspace_id=ws)
        refused = await call_error(client, "workspace_delete", workspace_id=ws)

        # The writer appends a line every 50 ms while the reader, in its own sandbox, waits for line 10.
        write = "for i in $(seq 1 40); do echo $i >> /mnt/shared/log; sleep 0.05; done"
        read = "until grep -qx 10 /mnt/shared/log 2>/dev/null; do sleep 0.02; done; echo saw-10"
        results: dict[str, dict[str, object]] = {}

        async def run(name: str, sandbox_id: str, command: str) -> None:
            results[name] = await call(client, "sandbox_exec", sandbox_id=sandbox_id, command=command, timeout_s=30)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(run, "write", writer["sandbox_id"], write)
                group.start_soon(run, "read", reader["sandbox_id"], read)
        read_only = await call(
            client, "sandbox_exec", sandbox_id=reader["sandbox_id"], command="echo x > /mnt/shared/y"
        )
        one_call = await call(
            client, "sandbox_run", command="wc -l < /mnt/ws/log", workspaces=[{**mount, "path": "/mnt/ws"}]
        )
        for sandbox in (writer, reader):
            await call(client, "sandbox_destroy", sandbox_id=sandbox["sandbox_id"])
        log = await call(client, "workspace_read_file", workspace_id=ws, path="log")
        await call(client, "workspace_delete", workspace_id=ws)
    assert seen["stdout"] == "from the host\n" and owner["stdout"] == "1000\n"
    assert sorted(described["mounted_by"]) == sorted([writer["sandbox_id"], reader["sandbox_id"]])
    assert "is mounted by sandbox" in refused and writer["sandbox_id"] in refused and reader["sandbox_id"] in refused
    assert results["read"]["stdout"] == "saw-10\n" and results["write"]["exit_code"] == 0
    assert read_only["exit_code"] != 0 and "Read-only file system" in str(read_only["stderr"])
    assert one_call["stdout"] == "40\n"
    assert log["content"] == "".join(f"{i}\n" for i in range(1, 41))


async def test_the_size_is_the_cap_inside_a_sandbox_and_here(app: App) -> None:
    async with mcp_client(app) as client:
        ws = (await call(client, "workspace_create", name="small", size_mib=32))["workspace_id"]
        mount = [{"workspace_id": ws, "path": "/mnt/small"}]
        filled = await call(
            client, "sandbox_run", command="dd if=/dev/zero of=/mnt/small/big bs=1M count=64", workspaces=mount
        )
        full = await call_error(
            client, "workspace_write_file", workspace_id=ws, path="more.bin", content="A" * (4 << 20)
        )
        described = await call(client, "workspace_describe", workspace_id=ws)
        await call(client, "workspace_delete", workspace_id=ws)
    assert filled["exit_code"] != 0 and "No space left on device" in str(filled["stderr"])
    assert "No space left on device" in full and "its size_mib is its cap" in full
    assert described["used_bytes"] > 0.9 * described["usable_bytes"], "the workspace was filled"


async def test_a_snapshot_restores_the_content_and_is_billed_with_the_workspace(app: App) -> None:
    async with mcp_client(app) as client:
        ws = (await call(client, "workspace_create", name="kept", size_mib=64))["workspace_id"]
        await call(client, "workspace_write_file", workspace_id=ws, path="data.txt", content="version 1")
        snapshot = await call(client, "workspace_snapshot", workspace_id=ws)
        lease = lease_of(app, ws)
        await call(client, "workspace_write_file", workspace_id=ws, path="data.txt", content="version 2")
        await call(client, "workspace_write_file", workspace_id=ws, path="new.txt", content="later")
        sandbox = await call(
            client, "sandbox_create", template="bash", workspaces=[{"workspace_id": ws, "path": "/mnt/k"}]
        )
        busy = await call_error(client, "workspace_restore", workspace_id=ws, snapshot_id=snapshot["snapshot_id"])
        await call(client, "sandbox_destroy", sandbox_id=sandbox["sandbox_id"])
        await call(client, "workspace_restore", workspace_id=ws, snapshot_id=snapshot["snapshot_id"])
        back = await call(client, "workspace_read_file", workspace_id=ws, path="data.txt")
        listed = await call(client, "workspace_list_files", workspace_id=ws)
        described = await call(client, "workspace_describe", workspace_id=ws)
        await call(client, "workspace_delete_snapshot", workspace_id=ws, snapshot_id=snapshot["snapshot_id"])
        after = lease_of(app, ws)
        await call(client, "workspace_delete", workspace_id=ws)
    assert snapshot["size_mib"] == 64 and 0 < snapshot["stored_bytes"] < 64 << 20
    assert lease is not None and lease.rate == {"workspace.storage_mib_ms": 128 * 1000}
    assert "is mounted by sandbox" in busy and sandbox["sandbox_id"] in busy
    assert back["content"] == "version 1" and [e["name"] for e in listed["entries"]] == ["data.txt"]
    assert [s["snapshot_id"] for s in described["snapshots"]] == [snapshot["snapshot_id"]]
    assert after is not None and after.rate == {"workspace.storage_mib_ms": 64 * 1000}
    assert not app.service(WorkspaceManager).disks.snapshot(snapshot["snapshot_id"]).exists()


async def test_another_tenant_can_neither_see_read_nor_mount_a_workspace(app: App) -> None:
    ensure_tenant(app.store, "intruder")
    async with mcp_client(app) as owner, mcp_client(app, "intruder") as intruder:
        ws = (await call(owner, "workspace_create", name="private", size_mib=32))["workspace_id"]
        await call(owner, "workspace_write_file", workspace_id=ws, path="secret.txt", content="mine")
        made_up = "ws_ffffffffffffffff"
        answers = {}
        for workspace_id in (ws, made_up):
            answers[workspace_id] = [
                await call_error(intruder, "workspace_describe", workspace_id=workspace_id),
                await call_error(intruder, "workspace_read_file", workspace_id=workspace_id, path="secret.txt"),
                await call_error(intruder, "workspace_write_file", workspace_id=workspace_id, path="x", content="x"),
                await call_error(intruder, "workspace_delete", workspace_id=workspace_id),
                await call_error(
                    intruder,
                    "sandbox_run",
                    command="cat /mnt/x/secret.txt",
                    workspaces=[{"workspace_id": workspace_id, "path": "/mnt/x"}],
                ),
            ]
        listed = await call(intruder, "workspace_list")
        still = await call(owner, "workspace_read_file", workspace_id=ws, path="secret.txt")
        await call(owner, "workspace_delete", workspace_id=ws)
    assert listed["workspaces"] == []
    assert [a.replace(ws, "ID") for a in answers[ws]] == [a.replace(made_up, "ID") for a in answers[made_up]]
    assert all("no workspace" in a for a in answers[ws])
    assert still["content"] == "mine"
