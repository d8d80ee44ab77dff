"""MCP tasks (io.modelcontextprotocol/tasks, SEP-2663) on a real server over Streamable HTTP, at
2026-07-28, with the official Python client declaring the extension: handles for long sandbox runs,
cancellation, errors inline, durability across a restart. (The TypeScript ext-tasks client and the
MCP Inspector drive the same: tests/e2e/test_official_clients.py.)"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from sqlalchemy import select

from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from skills.sandbox.rows import Sandbox
from tests.e2e.conftest import Served, first_key, start_http_server, store_of
from tests.mcp_helpers import (
    CreatedTask,
    PollingTasks,
    call,
    cancel_task,
    get_task,
    http_client,
    until_done,
)
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
MODERN = "2026-07-28"
# Past the couple of seconds within which a long-running op still answers directly.
SLOW_PRINT = {"code": "import time; time.sleep(4); print('done')", "timeout_s": 60}


async def test_a_long_call_answers_with_a_task_handle_then_its_result(http_server: Served) -> None:
    async with http_client(http_server.url, http_server.key, mode=MODERN, extensions=[PollingTasks()]) as client:
        created = await client.session.call_tool("sandbox_run", SLOW_PRINT, allow_claimed=True)
        assert isinstance(created, CreatedTask) and created.status == "working"
        assert created.ttl_ms is None and created.poll_interval_ms == 500
        done = await until_done(client, created.task_id)
        assert done.status == "completed" and done.result is not None
        assert done.result["structuredContent"]["stdout"] == "done\n"
        assert done.result["structuredContent"]["task_id"] == created.task_id

        # The SDK's own call_tool, with the extension's resolver, hides the polling.
        resolved = await client.call_tool("sandbox_run", SLOW_PRINT)
        assert not resolved.is_error and (resolved.structured_content or {})["stdout"] == "done\n"

        # A call done within the window answers directly, as does any call of a client
        # without the extension.
        quick = await call(client, "sandbox_run", code="print(2)")
        assert quick["stdout"] == "2\n"
    async with http_client(http_server.url, http_server.key, mode=MODERN) as plain:
        assert (await call(plain, "sandbox_run", **SLOW_PRINT))["stdout"] == "done\n"


async def test_cancelling_a_task_stops_its_sandbox_and_errors_are_inline(http_server: Served) -> None:
    store = store_of(http_server.home)
    async with http_client(http_server.url, http_server.key, mode=MODERN, extensions=[PollingTasks()]) as client:
        created = await client.session.call_tool(
            "sandbox_run", {"code": "import time; time.sleep(300)", "timeout_s": 600}, allow_claimed=True
        )
        assert isinstance(created, CreatedTask)
        await cancel_task(client, created.task_id)
        cancelled = await until_done(client, created.task_id)
        assert cancelled.status == "cancelled"

        failing = await client.session.call_tool(
            "sandbox_run", {"code": "import time; time.sleep(60)", "timeout_s": 3}, allow_claimed=True
        )
        assert isinstance(failing, CreatedTask)
        failed = await until_done(client, failing.task_id)
        # A tool that ran and failed is a completed call whose result is an error.
        assert failed.status == "completed" and failed.result is not None and failed.result["isError"]
        assert "ran past its timeout_s of 3 s" in failed.result["content"][0]["text"]
        # One that fails at once answers with its error directly.
        bad = await client.call_tool("sandbox_run", {"code": "print(1)", "template": "nope"})
        assert bad.is_error and "unknown template 'nope'" in bad.content[0].text  # type: ignore[union-attr]

        with pytest.raises(MCPError) as unknown:  # another tenant's task is as unknown as a made-up id
            await cancel_task(client, "t_ffffffffffffffff")
        assert unknown.value.code == INVALID_PARAMS

    def sandbox_gone() -> bool:
        with store.transaction() as session:
            rows = session.scalars(select(Sandbox.state).where(Sandbox.task_id == created.task_id)).all()
        return list(rows) == ["destroyed"]

    await until(sandbox_gone, "the cancelled task's sandbox to be destroyed")
    store.close()


async def test_task_handles_survive_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    store = store_of(home)
    proc, url = start_http_server(home, {"CLOUDSKILLS_POOL_SIZE": "0"})

    def containers() -> list[str]:
        return [c.container_id for c in DockerDriver().list_labelled({LABEL_STORE: store.store_id})]

    try:
        async with http_client(url, key, mode=MODERN, extensions=[PollingTasks()]) as client:
            finished = await client.session.call_tool("sandbox_run", SLOW_PRINT, allow_claimed=True)
            assert isinstance(finished, CreatedTask)
            await until_done(client, finished.task_id)
            cut = await client.session.call_tool(
                "sandbox_run", {"code": "import time; time.sleep(300)", "timeout_s": 600}, allow_claimed=True
            )
            assert isinstance(cut, CreatedTask)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)

        proc, url = start_http_server(home, {"CLOUDSKILLS_POOL_SIZE": "0"})
        async with http_client(url, key, mode=MODERN, extensions=[PollingTasks()]) as client:
            before = await get_task(client, finished.task_id)
            assert before.status == "completed" and before.result is not None
            assert before.result["structuredContent"]["stdout"] == "done\n"
            after = await until_done(client, cut.task_id)
            assert after.status == "completed" and after.result is not None and after.result["isError"]
            assert "server stopped" in after.result["content"][0]["text"]
        # The pass that failed the killed server's task also removed its sandbox: nothing of
        # the store is left running (it would have outlived both servers until its idle limit).
        await until(lambda: not containers(), "the killed server's sandbox to be removed")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for container_id in containers():  # what a failure above left
            DockerDriver().destroy(container_id)
        store.close()
