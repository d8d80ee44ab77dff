"""Code an LLM wrote is assumed hostile. Each attack runs for real, on runc and on gVisor:
it must be contained, get a clear result, leave the host and other sandboxes as they
were, and be charged for what ran (no more)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from runtime.app import App
from scheduler.models import LedgerEntry, Task
from skills.sandbox.manager import SandboxManager
from tests.conftest import sandboxes_in_use
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
TEMPLATES = ["python", "python-gvisor"]


async def run(app: App, template: str, **arguments: Any) -> tuple[bool, dict[str, Any] | str]:
    """(failed, result or error message) of one sandbox_run."""
    async with mcp_client(app) as client:
        result = await client.call_tool("sandbox_run", {"template": template, **arguments})
    if result.is_error:
        text = result.content[0].text  # type: ignore[union-attr]
        assert "Traceback" not in text
        return True, text
    assert result.structured_content is not None
    return False, result.structured_content


async def assert_unharmed_and_billed_exactly(app: App) -> None:
    """Another sandbox still works, nothing is left running, and every charge is a task's cost."""
    async with mcp_client(app) as client:
        after = await call(client, "sandbox_run", code="print('still fine')")
    assert after["stdout"] == "still fine\n"
    await until(lambda: not sandboxes_in_use(app), "the hostile sandbox to be removed")
    with app.store.transaction() as session:
        ledger = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0)))
        costs = session.scalar(select(func.coalesce(func.sum(Task.cost_micros), 0)))
        hostile = session.scalars(select(Task).where(Task.id != after["task_id"])).all()
    assert ledger == costs
    assert all(task.cost_micros > 0 for task in hostile), "what ran must be charged"


@pytest.mark.parametrize("template", TEMPLATES)
async def test_fork_bomb_is_stopped_by_the_pids_limit(app: App, template: str) -> None:
    failed, result = await run(
        app, template, language="bash", code=":(){ :|:& };: 2>/dev/null; sleep 1; echo survived", timeout_s=5
    )
    # Under runc the pids limit holds the bomb while the script goes on to its end;
    # under gVisor the sandbox itself may give out first, and the answer says so.
    if failed:
        assert "sandbox has stopped while running your command" in str(result) or "timeout_s" in str(result)
    else:
        assert isinstance(result, dict) and "survived" in result["stdout"]
    await assert_unharmed_and_billed_exactly(app)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_memory_bomb_is_killed_inside_its_limit(app: App, template: str) -> None:
    failed, result = await run(app, template, code="blocks = []\nwhile True: blocks.append(bytearray(64 << 20))")
    if failed:  # gVisor: the whole sandbox may be the one the OOM killer takes
        assert "sandbox has stopped while running your command" in str(result)
    else:
        assert isinstance(result, dict) and result["exit_code"] in (137, 1)  # killed, or MemoryError
    await assert_unharmed_and_billed_exactly(app)


async def test_filling_the_work_dir_stops_at_its_size(app: App) -> None:
    # The python template's disk is 2 GiB, on disk: 2100 MiB cannot fit.
    failed, result = await run(app, "python", command="dd if=/dev/zero of=/work/big bs=1M count=2100; df -m /work")
    assert not failed and isinstance(result, dict), result
    assert "No space left on device" in result["stderr"]
    assert result["exit_code"] == 0  # df ran after dd failed
    await assert_unharmed_and_billed_exactly(app)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_a_cpu_spin_is_stopped_at_its_deadline(app: App, template: str) -> None:
    failed, message = await run(app, template, code="while True: pass", timeout_s=1)
    assert failed and "ran past its timeout_s of 1 s" in str(message)
    await assert_unharmed_and_billed_exactly(app)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_host_files_and_the_docker_socket_are_out_of_reach(app: App, template: str, tmp_path: Any) -> None:
    marker = f"cloudskills-host-marker-{uuid.uuid4().hex}"
    (tmp_path / marker).write_text("host secret")
    os.chmod(tmp_path, 0o755)
    failed, result = await run(
        app,
        template,
        command=f"find / -name '{marker}' 2>/dev/null | head -1; ls -la /var/run/docker.sock /run/docker.sock 2>&1; "
        "cat /proc/1/environ 2>&1 | head -c 200; echo; id -u",
    )
    assert not failed and isinstance(result, dict)
    assert marker not in result["stdout"]
    assert result["stdout"].count("cannot access") == 2  # no Docker socket, under either runtime
    assert result["stdout"].strip().endswith("1000")
    await assert_unharmed_and_billed_exactly(app)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_no_writes_outside_the_work_dir_and_no_escalation(app: App, template: str) -> None:
    failed, result = await run(
        app,
        template,
        command="for p in /etc/x /usr/bin/x /root/x /x; do (echo x > $p) 2>/dev/null && echo WROTE $p; done; "
        "su -c id root </dev/null 2>&1 | tail -1; "
        "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1; "
        "ulimit -u 100000 2>&1; prlimit --pid $$ --nproc=100000 2>&1 | tail -1; "
        "echo 1 > /sys/fs/cgroup/pids.max 2>&1 | tail -1; id -u",
    )
    assert not failed and isinstance(result, dict)
    out = result["stdout"]
    assert "WROTE" not in out
    assert "PermissionError" in out
    assert "uid=0" not in out
    assert out.strip().endswith("1000")
    await assert_unharmed_and_billed_exactly(app)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_only_loopback_exists_no_egress_is_possible(app: App, template: str) -> None:
    # We look at the interfaces only: no traffic is ever sent off this machine.
    failed, result = await run(app, template, command="tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert not failed and isinstance(result, dict)
    assert result["stdout"].split() in (["lo"], [])
    await assert_unharmed_and_billed_exactly(app)


async def test_huge_and_binary_output_is_bounded_and_readable(app: App) -> None:
    failed, result = await run(
        app, "python", code="import os, sys\nsys.stdout.buffer.write(os.urandom(20_000_000))", max_output=10_000
    )
    assert not failed and isinstance(result, dict)
    assert result["stdout_truncated"] is True
    assert "output truncated" in result["stdout"]
    await assert_unharmed_and_billed_exactly(app)


async def test_killing_the_exec_agent_ends_the_sandbox_with_a_clear_error(app: App) -> None:
    failed, message = await run(app, "python", command="pkill -9 -f agent.py; sleep 5")
    assert failed and "sandbox has stopped while running your command" in str(message)
    await assert_unharmed_and_billed_exactly(app)


async def test_a_sandbox_slept_past_its_ttl_is_destroyed(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", ttl_s=10))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command="sleep 0.1")
        from skills.sandbox.rows import Sandbox

        with app.store.transaction() as session:  # as if it had idled for a long time
            row = session.get(Sandbox, sid)
            assert row is not None
            row.last_used_at = row.last_used_at.replace(year=2000)
        await until(lambda: app.service(SandboxManager).row(sid).state == "destroyed", "the reaper")
        message = await call_error(client, "sandbox_exec", sandbox_id=sid, command="true")
    assert "expired after 10 s without a call (its ttl_s)" in message
