"""A sandbox at working size, through the tools on the real engine: a disk of its own with a
cap that holds, its limits visible inside, a toolchain in the dev template, no network said
plainly, and gVisor sandboxes that live through their process limit."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.app import App
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def sh(client: Any, sandbox_id: str, command: str, timeout_s: float = 120) -> dict[str, Any]:
    return await call(client, "sandbox_exec", sandbox_id=sandbox_id, command=command, timeout_s=timeout_s)


async def test_a_2_gib_working_set_fits_on_disk_and_the_cap_refuses_more(app: App) -> None:
    async with mcp_client(app) as client:
        created = await call(client, "sandbox_create", template="python", disk_mib=2304)
        sid = created["sandbox_id"]
        kind = await sh(client, sid, "stat -f -c %T /work /tmp; df -m --output=size /work | tail -1")
        written = await sh(client, sid, "head -c 2G /dev/zero > /work/set && stat -c %s /work/set && free -m")
        more = await sh(client, sid, "head -c 1G /dev/zero > /tmp/more; echo exit=$?; rm -f /tmp/more")
        await sh(client, sid, "head -c 300M /dev/zero > /work/fill || true")
        refused = await client.call_tool(
            "sandbox_write_file", {"sandbox_id": sid, "path": "one.txt", "content": "x" * (1 << 20)}
        )
        gone = await sh(client, sid, "ls /work; df -m --output=avail /work | tail -1")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    assert created["disk_mib"] == 2304
    assert kind["stdout"].split()[:2] == ["ext2/ext3", "ext2/ext3"], "on disk, not a tmpfs"
    assert 2200 <= int(kind["stdout"].split()[2]) <= 2304
    assert written["exit_code"] == 0 and written["stdout"].startswith(f"{2 << 30}\n")
    # 2 GiB written by a sandbox of 512 MiB: its memory is not what holds them.
    assert next(line for line in written["stdout"].splitlines() if line.startswith("Mem:")).split()[1] == "512"
    assert "No space left on device" in more["stderr"] and "exit=1" in more["stdout"]
    assert refused.is_error
    message = refused.content[0].text  # type: ignore[union-attr]
    assert "the sandbox's disk of" in message and "is full" in message and "larger disk_mib" in message
    assert "one.txt" not in gone["stdout"], "a write that did not fit leaves no half file"


async def test_limits_show_inside_as_build_tools_read_them(app: App) -> None:
    async with mcp_client(app) as client:
        for template in ("python", "python-gvisor"):
            sid = (await call(client, "sandbox_create", template=template, vcpus=1, memory_mib=768))["sandbox_id"]
            seen = await sh(
                client,
                sid,
                "nproc; grep MemTotal /proc/meminfo; free -m | awk '/^Mem:/ {print $2}'; "
                "python3 -c 'import os; print(len(os.sched_getaffinity(0)))'",
            )
            await call(client, "sandbox_destroy", sandbox_id=sid)
            nproc, meminfo, free, affinity = seen["stdout"].splitlines()
            assert nproc == affinity == "1", (template, seen)
            assert meminfo.split()[1] == str(768 * 1024), (template, seen)
            assert free == "768", (template, seen)


async def test_the_dev_template_builds_tests_and_versions_code(app: App) -> None:
    program = '#include <stdio.h>\nint main(void) { printf("built %d\\n", 6 * 7); return 0; }\n'
    test = "def test_sum():\n    assert sum([1, 2]) == 3\n"
    async with mcp_client(app) as client:
        created = await call(client, "sandbox_create")
        sid = created["sandbox_id"]
        await call(client, "sandbox_write_file", sandbox_id=sid, path="src/hello.c", content=program)
        await call(client, "sandbox_write_file", sandbox_id=sid, path="src/test_sum.py", content=test)
        built = await sh(client, sid, "cd src && gcc -O2 -o hello hello.c && ./hello && g++ --version | head -1")
        tools = await sh(
            client,
            sid,
            "cd src && printf 'all:\\n\\techo made\\n' > Makefile && make -s && "
            "git init -q && git add -A && git -c user.email=a@b -c user.name=agent commit -qm first && "
            "git log --oneline | wc -l && python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version && "
            "python3 -m pytest -q test_sum.py 2>&1 | tail -1 && curl --version | head -1 && which ping",
        )
        await call(client, "sandbox_destroy", sandbox_id=sid)
    assert created["template"] == "dev" and created["disk_mib"] == 4096
    assert built["stdout"].startswith("built 42\n") and "g++" in built["stdout"], built
    lines = tools["stdout"].splitlines()
    assert tools["exit_code"] == 0, tools
    assert lines[0] == "made" and lines[1] == "1" and lines[2].startswith("pip ")
    assert "1 passed" in lines[3] and lines[4].startswith("curl ") and lines[5].endswith("ping")


async def test_no_network_is_said_plainly(app: App) -> None:
    async with mcp_client(app) as client:
        ran = await call(
            client,
            "sandbox_run",
            code="import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)",
        )
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        fetched = await sh(client, sid, "curl -sS http://example.com; git ls-remote https://example.com/x.git")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    for output in (ran, fetched):
        assert output["exit_code"] != 0
        assert "this sandbox has no network" in output["stderr"] and "retrying will not help" in output["stderr"]


async def test_a_busy_gvisor_sandbox_lives_through_its_process_limit(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="bash-gvisor"))["sandbox_id"]
        busy = await sh(client, sid, "for i in $(seq 1 120); do sleep 5 & done; echo started; wait; echo done")
        # Past its limit (256 processes): refused inside, and the sandbox lives on.
        bomb = await sh(
            client, sid, "for i in $(seq 1 400); do (sleep 3 &) 2>/dev/null; done; echo tried; sleep 3.5", 60
        )
        after = await sh(client, sid, "echo alive")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    assert busy["stdout"] == "started\ndone\n" and busy["exit_code"] == 0
    assert "tried" in bomb["stdout"]
    assert after["stdout"] == "alive\n"
