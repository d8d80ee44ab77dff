"""kill -9 of the server in the middle of 20 running tasks, with a live session sandbox,
then a restart: every task resolved, every hold released exactly once, every task's
sandbox reaped, the session sandbox adopted again (files and Python state intact),
the totals exact."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
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
TASKS = 20


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


async def test_kill_9_mid_tasks_then_restart(tmp_path: Path, docker_driver: DockerDriver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    # No warm pool here: every container then belongs to one of the 20 tasks.
    extra_env = {"CLOUDSKILLS_WORKERS": "32", "CLOUDSKILLS_POOL_SIZE": "0"}
    proc, url = start_http_server(home, extra_env)
    store = store_of(home)
    labels = {LABEL_STORE: store.store_id}

    async def long_call() -> None:
        async with http_client(url, key) as client:
            await client.call_tool("sandbox_run", {"code": "import time; time.sleep(300)", "timeout_s": 600})

    try:
        async with http_client(url, key) as client:
            session = (await call(client, "sandbox_create"))["sandbox_id"]
            await call(client, "sandbox_write_file", sandbox_id=session, path="keep.txt", content="kept")
            await call(client, "sandbox_run_code", sandbox_id=session, code="state = 41")
        async with anyio.create_task_group() as group:
            for _ in range(TASKS):
                group.start_soon(long_call)
            await anyio.to_thread.run_sync(
                wait_until, lambda: len(docker_driver.list_labelled(labels)) == TASKS + 1, f"{TASKS} sandboxes"
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            group.cancel_scope.cancel()
        with store.transaction() as db:
            assert db.scalar(select(func.count()).where(Task.state == "running")) == TASKS
            held = db.get(Tenant, "local").held_micros  # type: ignore[union-attr]
        assert held > 0, "the killed tasks' holds are still on the tenant"
        assert len(docker_driver.list_labelled(labels)) == TASKS + 1, "the sandboxes outlive the killed server"

        proc, url = start_http_server(home, extra_env)
        await anyio.to_thread.run_sync(
            wait_until, lambda: len(docker_driver.list_labelled(labels)) == 1, "the reaper to remove the orphans"
        )
        async with http_client(url, key) as client:
            after = await call(client, "sandbox_run", code="print('fine')")
            kept = await call(client, "sandbox_read_file", sandbox_id=session, path="keep.txt")
            state = await call(client, "sandbox_run_code", sandbox_id=session, code="print(state + 1)")
            await call(client, "sandbox_destroy", sandbox_id=session)
        assert after["stdout"] == "fine\n"
        assert kept["content"] == "kept" and state["stdout"] == "42\n"
        with store.transaction() as db:
            lost = db.scalars(select(Task).where(Task.op == "run", Task.id != after["task_id"])).all()
            tenant = db.get(Tenant, "local")
            assert tenant is not None
            ledger_total = db.scalar(select(func.sum(LedgerEntry.amount_micros)))
            settled = db.scalar(select(func.sum(Task.cost_micros)))
            lifetime = db.scalar(select(func.sum(LedgerEntry.amount_micros)).where(LedgerEntry.op == "lifetime"))
            charged_to_lost = db.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.task_id.in_([t.id for t in lost]))
            )
        assert len(lost) == TASKS
        assert {t.state for t in lost} == {"failed"}
        assert all("server stopped" in (t.error_message or "") for t in lost)
        assert charged_to_lost == 0
        assert tenant.held_micros == 0
        assert ledger_total == (settled or 0) + (lifetime or 0) == tenant.spent_micros
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        store.close()
