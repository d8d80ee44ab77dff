"""The sandbox skill through the in-memory MCP client, on real Docker sandboxes."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.tenants import ensure_tenant, update_tenant
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, SandboxSpec
from sandbox.images import sandbox_image
from scheduler.models import LedgerEntry, Task
from skills.sandbox.manager import SandboxManager
from skills.sandbox.rows import Sandbox
from tests.conftest import containers_of, sandboxes_in_use
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_run_returns_streams_exit_code_files_and_cost(app: App) -> None:
    async with mcp_client(app) as client:
        out = await call(
            client,
            "sandbox_run",
            code="import sys; print(open('in.txt').read()); print('oops', file=sys.stderr); "
            "open('out.bin','wb').write(bytes([255,254,0])); sys.exit(3)",
            files=[{"path": "in.txt", "content": "hello"}],
            outputs=["out.bin", "missing.txt"],
        )
    assert out["exit_code"] == 3
    assert out["stdout"] == "hello\n" and out["stderr"] == "oops\n"
    assert out["files"][0]["encoding"] == "base64"
    assert base64.b64decode(out["files"][0]["content"]) == b"\xff\xfe\x00"
    assert "no file" in out["files"][1]["error"]
    assert out["cost"]["micros"] > 0 and out["cost"]["amount"].endswith(" USD")
    with app.store.transaction() as session:
        task = session.get(Task, out["task_id"])
        assert task is not None and task.state == "succeeded" and task.cost_micros == out["cost"]["micros"]


async def test_run_with_a_command_and_bash(app: App) -> None:
    async with mcp_client(app) as client:
        out = await call(client, "sandbox_run", command="echo $((6*7)) && echo $GREETING", env={"GREETING": "hi"})
        script = await call(client, "sandbox_run", language="bash", code="for i in 1 2 3; do echo $i; done")
    assert out["stdout"] == "42\nhi\n"
    assert script["stdout"] == "1\n2\n3\n"


async def test_a_session_keeps_files_between_calls(app: App) -> None:
    async with mcp_client(app) as client:
        created = await call(client, "sandbox_create")
        sid = created["sandbox_id"]
        assert created["template"] == "dev" and created["disk_mib"] == 4096
        await call(client, "sandbox_write_file", sandbox_id=sid, path="notes/a.txt", content="first")
        await call(client, "sandbox_exec", sandbox_id=sid, command="echo second >> notes/a.txt")
        ran = await call(client, "sandbox_run_code", sandbox_id=sid, code="print(open('notes/a.txt').read())")
        read = await call(client, "sandbox_read_file", sandbox_id=sid, path="/work/notes/a.txt")
        listing = await call(client, "sandbox_list_files", sandbox_id=sid, path="notes")
        live = await call(client, "sandbox_list")
        destroyed = await call(client, "sandbox_destroy", sandbox_id=sid)
        again = await call(client, "sandbox_destroy", sandbox_id=sid)
        after = await call_error(client, "sandbox_exec", sandbox_id=sid, command="true")
    assert ran["stdout"] == "firstsecond\n\n"
    assert read["content"] == "firstsecond\n" and read["encoding"] == "utf-8"
    assert [e["name"] for e in listing["entries"]] == ["a.txt"]
    assert [s["sandbox_id"] for s in live["sandboxes"]] == [sid]
    assert destroyed["destroyed"] is True and again["destroyed"] is False
    assert "was destroyed" in after and "sandbox_create" in after
    with app.store.transaction() as session:
        lifetime = session.scalars(select(LedgerEntry).where(LedgerEntry.op == "lifetime")).all()
        assert {e.item for e in lifetime} == {"sandbox.vcpu_ms", "sandbox.mib_ms", "sandbox.disk_mib_ms"}


async def test_bad_input_gets_one_clear_error_and_costs_nothing(app: App) -> None:
    async with mcp_client(app) as client:
        errors = [
            await call_error(client, "sandbox_nope"),
            await call_error(client, "sandbox_run", code=123),
            await call_error(client, "sandbox_run", code="x", command="y"),
            await call_error(client, "sandbox_run"),
            await call_error(client, "sandbox_run", code="1", bogus=True),
            await call_error(client, "sandbox_run", code="1", timeout_s=-1),
            await call_error(client, "sandbox_run", code="1", template="windows"),
            await call_error(client, "sandbox_exec", command="ls"),
            await call_error(client, "sandbox_exec", sandbox_id="sb_doesnotexist", command="ls"),
            await call_error(client, "sandbox_write_file", sandbox_id="sb_x", path="a", content="!", encoding="base64"),
        ]
        usage = await call(client, "billing_usage")
    for message in errors:
        assert message.endswith((".", "'")) and len(message) < 400, message
    assert "no tool 'sandbox_nope'" in errors[0]
    assert "`code` input should be a valid string" in errors[1]
    assert "exactly one of `code`" in errors[2]
    assert "bogus" in errors[4] and "not an argument" in errors[4]
    assert "unknown template 'windows'" in errors[6]
    assert "`sandbox_id` is required" in errors[7]
    assert "no sandbox 'sb_doesnotexist'" in errors[8]
    assert usage["total"]["micros"] == 0
    assert not sandboxes_in_use(app)


async def test_code_that_never_ends_is_stopped_and_billed_for_what_ran(app: App) -> None:
    async with mcp_client(app) as client:
        message = await call_error(
            client,
            "sandbox_run",
            code="import time\nprint('working', flush=True)\nwhile True: time.sleep(1)",
            timeout_s=1,
        )
        usage = await call(client, "billing_usage")
    assert "ran past its timeout_s of 1 s" in message and "working" in message
    assert usage["total"]["micros"] > 0
    with app.store.transaction() as session:
        task = session.scalars(select(Task).where(Task.op == "run")).one()
        assert task.state == "timed_out" and task.cost_micros == usage["total"]["micros"]


async def test_huge_output_is_cut_with_a_marker(app: App) -> None:
    async with mcp_client(app) as client:
        out = await call(client, "sandbox_run", code="print('x' * 10_000_000)", max_output=4096)
    assert out["stdout_truncated"] is True
    assert len(out["stdout"]) < 5000 and "output truncated" in out["stdout"]


async def test_another_tenants_sandbox_looks_like_a_missing_one(app: App) -> None:
    ensure_tenant(app.store, "intruder")
    async with mcp_client(app) as owner, mcp_client(app, "intruder") as intruder:
        sid = (await call(owner, "sandbox_create"))["sandbox_id"]
        theirs = await call_error(intruder, "sandbox_exec", sandbox_id=sid, command="ls")
        missing = await call_error(intruder, "sandbox_exec", sandbox_id="sb_0000000000000000", command="ls")
        destroy = await call_error(intruder, "sandbox_destroy", sandbox_id=sid)
        listed = await call(intruder, "sandbox_list")
        still = await call(owner, "sandbox_exec", sandbox_id=sid, command="echo alive")
        await call(owner, "sandbox_destroy", sandbox_id=sid)
    assert theirs.replace(sid, "ID") == missing.replace("sb_0000000000000000", "ID")
    assert "no sandbox" in destroy
    assert listed["sandboxes"] == []
    assert still["stdout"] == "alive\n"


async def test_the_reaper_destroys_idle_sandboxes_and_strays(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", ttl_s=10))["sandbox_id"]
    # A container with our labels but no record, as a crash between the two would leave.
    labels = {LABEL_STORE: app.store.store_id, LABEL_SANDBOX: "sb_ghost"}
    stray = app.docker.create(SandboxSpec(image=sandbox_image(), labels=labels))
    with app.store.transaction() as session:
        row = session.get(Sandbox, sid)
        assert row is not None
        row.last_used_at = row.last_used_at.replace(year=2000)
    # The app's own reaper runs every 0.2 s here.
    await until(lambda: stray.container_id not in containers_of(app.docker, app), "the stray to be removed")
    await until(lambda: app.service(SandboxManager).row(sid).state == "destroyed", "the idle sandbox to be reaped")
    assert app.service(SandboxManager).row(sid).destroy_reason == "idle_ttl"
    with app.store.transaction() as session:
        billed = session.scalars(
            select(LedgerEntry).where(LedgerEntry.idempotency_key.startswith(f"lease:{sid}:"))
        ).all()
        assert billed


async def test_live_sandboxes_are_capped_by_quota(app: App) -> None:
    update_tenant(app.store, "local", max_live_sandboxes=2)
    async with mcp_client(app) as client:
        first = await call(client, "sandbox_create")
        second = await call(client, "sandbox_create")
        refused = await call_error(client, "sandbox_create")
        refused_run = await call_error(client, "sandbox_run", code="print(1)")
        await call(client, "sandbox_destroy", sandbox_id=first["sandbox_id"])
        third = await call(client, "sandbox_create")
        for sandbox in (second, third):
            await call(client, "sandbox_destroy", sandbox_id=sandbox["sandbox_id"])
    assert "2 live sandboxes" in refused and "sandbox_destroy" in refused
    assert "live sandboxes" in refused_run
    assert third["sandbox_id"]


async def test_run_code_keeps_python_state_between_calls(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="import math\ntotal = 40")
        later = await call(client, "sandbox_run_code", sandbox_id=sid, code="total += 2\nprint(total, math.pi > 3)")
        failed = await call(client, "sandbox_run_code", sandbox_id=sid, code="raise ValueError('boom')")
        still = await call(client, "sandbox_run_code", sandbox_id=sid, code="print(total)")
        exited = await call(client, "sandbox_run_code", sandbox_id=sid, code="import sys; sys.exit(4)")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    assert later["stdout"] == "42 True\n"
    assert failed["exit_code"] == 1 and "ValueError: boom" in failed["stderr"] and "kernel" not in failed["stderr"]
    assert still["stdout"] == "42\n"
    assert exited["exit_code"] == 4
