"""kill -9 of the server in the middle of a task, then a restart: the task is resolved,
its sandbox reaped, its hold released, and nothing is charged for the lost work."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from scheduler.models import LedgerEntry, Task, Tenant
from tests.e2e.conftest import first_key, start_http_server, store_of
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def wait_until(condition: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


async def test_kill_9_mid_task_then_restart(tmp_path: Path, docker_driver: DockerDriver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    proc, url = start_http_server(home)
    store = store_of(home)
    labels = {LABEL_STORE: store.store_id}

    async def long_call() -> None:
        async with http_client(url, key) as client:
            await client.call_tool("sandbox_run", {"code": "import time; time.sleep(60)", "timeout_s": 120})

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(long_call)
            await anyio.to_thread.run_sync(wait_until, lambda: docker_driver.list_labelled(labels), "the sandbox")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            group.cancel_scope.cancel()
        assert docker_driver.list_labelled(labels), "the sandbox should outlive the killed server"

        proc, url = start_http_server(home)
        await anyio.to_thread.run_sync(
            wait_until, lambda: not docker_driver.list_labelled(labels), "the reaper to remove the orphan"
        )
        async with http_client(url, key) as client:
            after = await call(client, "sandbox_run", code="print('fine')")
        assert after["stdout"] == "fine\n"
        with store.transaction() as session:
            lost = session.scalars(select(Task).where(Task.args["timeout_s"].as_float() == 120)).one()
            tenant = session.get(Tenant, "local")
            charged = session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.task_id == lost.id)
            )
        assert lost.state == "failed" and "server stopped" in (lost.error_message or "")
        assert charged == 0
        assert tenant is not None and tenant.held_micros == 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        store.close()
