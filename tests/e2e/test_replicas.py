"""Two server replicas on one real PostgreSQL (issue 20): a replica that starts leaves the
other's running task alone; a replica killed with kill -9 mid-task is judged dead once its
heartbeat lapses, and the survivor fails its task and releases its hold exactly once, reaps
that task's sandbox and the dead replica's warm pool, and serves on."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from runtime.storage import open_store
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, LABEL_WORKER
from scheduler.models import Lease, Task, Tenant, Worker
from scheduler.store import Store
from tests.e2e.conftest import start_http_server, stop_replicas
from tests.mcp_helpers import call, http_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def replica(home: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    home.mkdir()
    env = {
        "CLOUDSKILLS_DATABASE_URL": url,
        "CLOUDSKILLS_WORKER_LAPSE_S": "3",
        "CLOUDSKILLS_REAP_INTERVAL_S": "0.5",
    }
    return start_http_server(home, env)


def worker_of(store: Store, pid: int) -> str:
    with store.transaction() as session:
        found = session.scalar(select(Worker.id).where(Worker.pid == pid))
        assert found is not None, f"no worker row for process {pid}"
        return found


def task_state(store: Store, task_id: str) -> tuple[str, str | None]:
    with store.transaction() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task.state, task.error_message


def held_for_tasks(store: Store) -> int:
    """What the tenant holds beyond its live resources' leases: its tasks' holds."""
    with store.transaction() as session:
        leases = session.scalar(select(func.coalesce(func.sum(Lease.held_micros), 0)).where(Lease.ended_at.is_(None)))
        return session.get(Tenant, "local").held_micros - int(leases or 0)  # type: ignore[union-attr]


async def test_a_replica_killed_mid_task_is_settled_by_the_other(
    tmp_path: Path,
    postgres_url: str,
    docker_driver: DockerDriver,
) -> None:
    store = open_store(postgres_url)
    new = bootstrap(store)
    assert new is not None
    doomed, doomed_url = replica(tmp_path / "a", postgres_url)
    survivor: subprocess.Popen[str] | None = None
    try:
        doomed_worker = worker_of(store, doomed.pid)
        started: dict[str, Any] = {}

        async def long_call() -> None:
            async with http_client(doomed_url, new.key) as client:
                await client.call_tool("sandbox_run", {"code": "import time; time.sleep(300)", "timeout_s": 600})

        def running_task() -> str | None:
            with store.transaction() as session:
                return session.scalar(select(Task.id).where(Task.state == "running", Task.op == "run"))

        async with anyio.create_task_group() as group:
            group.start_soon(long_call)
            await until(running_task, "the long sandbox_run to start", timeout_s=60)
            started["task"] = running_task()
            # A second replica starting leaves the first's running task alone.
            survivor, survivor_url = replica(tmp_path / "b", postgres_url)
            survivor_worker = worker_of(store, survivor.pid)
            async with http_client(survivor_url, new.key) as client:
                assert (await call(client, "sandbox_run", code="print(1)"))["stdout"] == "1\n"
            # What one replica made, another reaches: a session sandbox, a channel's message.
            async with http_client(doomed_url, new.key) as there:
                session = (await call(there, "sandbox_create"))["sandbox_id"]
                await call(there, "sandbox_run_code", sandbox_id=session, code="kept = 41")
                await call(there, "channel_send", channel="jobs", body="from a")
            async with http_client(survivor_url, new.key) as client:
                got = await call(client, "sandbox_run_code", sandbox_id=session, code="kept += 1\nprint(kept)")
                assert got["stdout"] == "42\n"
                received = await call(client, "channel_receive", channel="jobs")
                assert [m["body"] for m in received["messages"]] == ["from a"]
            assert task_state(store, started["task"])[0] == "running"
            pools = {LABEL_STORE: store.store_id, LABEL_WORKER: doomed_worker}
            await until(lambda: docker_driver.list_labelled(pools), "the doomed replica's warm pool", timeout_s=60)

            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            group.cancel_scope.cancel()

        await until(lambda: task_state(store, started["task"])[0] != "running", "the task settled", timeout_s=60)
        state = task_state(store, started["task"])
        assert state[0] == "failed" and "server stopped" in (state[1] or ""), state
        await until(lambda: held_for_tasks(store) == 0, "the killed task's hold released", timeout_s=30)
        # Its warm pool is reaped; the one it handed over (the session sandbox) is the tenant's.
        await until(
            lambda: all(c.labels.get(LABEL_SANDBOX) == session for c in docker_driver.list_labelled(pools)),
            "the dead replica's warm pool reaped",
            timeout_s=60,
        )
        theirs = {LABEL_STORE: store.store_id}
        await until(
            lambda: all(
                c.labels.get(LABEL_WORKER) == survivor_worker or c.labels.get(LABEL_SANDBOX) == session
                for c in docker_driver.list_labelled(theirs)
            ),
            "the killed task's sandbox reaped (the session sandbox lives on)",
            timeout_s=60,
        )
        async with http_client(survivor_url, new.key) as client:
            assert (await call(client, "sandbox_run", code="print(2)"))["stdout"] == "2\n"
            # The dead replica's session sandbox is still the tenant's, through the survivor.
            got = await call(client, "sandbox_run_code", sandbox_id=session, code="print(kept)")
            assert got["stdout"] == "42\n"
            await call(client, "sandbox_destroy", sandbox_id=session)
    finally:
        stop_replicas((doomed, survivor), store, docker_driver)
