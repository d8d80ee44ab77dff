"""A workspace outlives the server that made it: after kill -9, and after a host's reboot
unmounted it, the next server mounts it again and its files are there."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from sandbox.disks import unmount
from tests.e2e.conftest import first_key, start_http_server
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def loop_devices_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout.strip()


async def test_files_survive_a_killed_server_and_an_unmount(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    env = {"CLOUDSKILLS_POOL_SIZE": "0"}
    proc, url = start_http_server(home, env)
    try:
        async with http_client(url, key) as client:
            ws = (await call(client, "workspace_create", name="kept", size_mib=32))["workspace_id"]
            await call(client, "workspace_write_file", workspace_id=ws, path="a/notes.txt", content="kept")
        proc.send_signal(signal.SIGKILL)  # no chance to tidy up
        proc.wait(timeout=20)
        mount_point = home / "workspaces" / "mnt" / ws
        assert mount_point.is_mount(), "a mount outlives the server process"
        unmount(mount_point)  # as a reboot of the host would

        proc, url = start_http_server(home, env)
        async with http_client(url, key) as client:
            back = await call(client, "workspace_read_file", workspace_id=ws, path="a/notes.txt")
            listed = await call(client, "workspace_list")
            await call(client, "workspace_delete", workspace_id=ws)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert back["content"] == "kept"
    assert [w["workspace_id"] for w in listed["workspaces"]] == [ws]
    image = home / "workspaces" / "images" / f"{ws}.img"
    assert not mount_point.exists() and not image.exists()
    assert not loop_devices_of(image)
