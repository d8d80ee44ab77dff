"""Replicas on one host share its data dir (issue 20): two `serve --http` processes on one
real PostgreSQL store and one home, and every kind of resource made through one is used
through the other: a SQLite and a PostgreSQL database, a workspace, a memory, a channel's
message, a VM. Then the first is killed with kill -9, and all of them still answer through
the second, which deletes them."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from runtime.storage import open_store
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from scheduler.models import Lease, Task, Tenant, Worker
from tests.e2e.conftest import start_http_server, stop_replicas
from tests.mcp_helpers import CreatedTask, PollingTasks, call, call_error, http_client, until_done

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def until_answers(client: Any, db: str) -> None:
    """Until the restarted server's place is live again (its worker row written)."""
    with anyio.fail_after(30):
        while (await client.call_tool("db_query", {"db_id": db, "sql": "SELECT 1"})).is_error:  # noqa: ASYNC110
            await anyio.sleep(0.2)


def left_on_disk(workspaces: Path) -> list[str]:
    """The workspace mounts and images left under a data dir's ``workspaces``."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [m for m in mounts if m.startswith(str(workspaces))] + [str(p) for p in workspaces.glob("images/*.img")]


def replica(home: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    env = {"CLOUDSKILLS_DATABASE_URL": url, "CLOUDSKILLS_WORKER_LAPSE_S": "3", "CLOUDSKILLS_POOL_SIZE": "0"}
    return start_http_server(home, env)


async def used_through(url: str, key: str, made: dict[str, Any]) -> None:
    """Each resource answers through the replica at ``url``."""
    async with http_client(url, key) as client:
        lite = await call(client, "db_query", db_id=made["sqlite"], sql="SELECT n FROM t")
        assert lite["rows"] == [[7]]
        pg = await call(client, "db_query", db_id=made["postgres"], sql="SELECT n FROM t")
        assert pg["rows"] == [[8]]
        read = await call(client, "workspace_read_file", workspace_id=made["workspace"], path="a.txt")
        assert read["content"] == "from a"
        found = await call(client, "memory_search", namespace="shared", query="where do the keys live")
        assert found["hits"] and found["hits"][0]["text"] == made["memory"]
        uname = await call(client, "vm_exec", vm_id=made["vm"], command="cat /tmp/mark")
        assert uname["stdout"] == "made through a\n"


async def test_every_kind_made_through_one_replica_answers_through_another(
    tmp_path: Path, postgres_url: str, docker_driver: DockerDriver
) -> None:
    store = open_store(postgres_url)
    new = bootstrap(store)
    assert new is not None
    home = tmp_path / "home"
    home.mkdir()
    first, first_url = replica(home, postgres_url)
    second: subprocess.Popen[str] | None = None
    made: dict[str, Any] = {}
    try:
        second, second_url = replica(home, postgres_url)
        async with http_client(first_url, new.key) as a:
            made["sqlite"] = (await call(a, "db_create", engine="sqlite"))["db_id"]
            for sql in ("CREATE TABLE t (n INTEGER)", "INSERT INTO t VALUES (7)"):
                await call(a, "db_query", db_id=made["sqlite"], sql=sql)
            made["postgres"] = (await call(a, "db_create", engine="postgres"))["db_id"]
            for sql in ("CREATE TABLE t (n int)", "INSERT INTO t VALUES (8)"):
                await call(a, "db_query", db_id=made["postgres"], sql=sql)
            made["workspace"] = (await call(a, "workspace_create", name="shared", size_mib=64))["workspace_id"]
            await call(a, "workspace_write_file", workspace_id=made["workspace"], path="a.txt", content="from a")
            made["memory"] = "The deploy keys live in the vault under ops/deploy."
            await call(a, "memory_put", namespace="shared", text=made["memory"])
            made["vm"] = (await call(a, "vm_create"))["vm_id"]
            await call(a, "vm_exec", vm_id=made["vm"], command="echo made through a > /tmp/mark")
        await used_through(second_url, new.key, made)
        # An MCP task handle made through one is polled to its end through the other.
        options: dict[str, Any] = {"mode": "2026-07-28", "extensions": [PollingTasks()]}
        async with http_client(first_url, new.key, **options) as a:
            slow = {"code": "import time; time.sleep(4); print('done')", "timeout_s": 60}
            created = await a.session.call_tool("sandbox_run", slow, allow_claimed=True)
            assert isinstance(created, CreatedTask)
        async with http_client(second_url, new.key, **options) as b:
            ended = await until_done(b, created.task_id)
            assert ended.status == "completed" and ended.result is not None
            assert ended.result["structuredContent"]["stdout"] == "done\n"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        await used_through(second_url, new.key, made)
        async with http_client(second_url, new.key) as b:
            for db in ("sqlite", "postgres"):
                assert (await call(b, "db_delete", db_id=made[db]))["deleted"]
            assert (await call(b, "workspace_delete", workspace_id=made["workspace"]))["deleted"]
            assert (await call(b, "vm_delete", vm_id=made["vm"]))["deleted"]
    finally:
        stop_replicas((first, second), store, docker_driver)


async def test_a_call_on_a_resource_of_another_machine_runs_there(
    tmp_path: Path, postgres_url: str, docker_driver: DockerDriver
) -> None:
    """Replicas with data dirs of their own stand for two machines: what one made lives in
    its data dir, and a call on it through the other runs on the first (scheduler/routing.py);
    once the first is gone, the call says so at once."""
    store = open_store(postgres_url)
    new = bootstrap(store)
    assert new is not None
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, first_url = replica(tmp_path / "a", postgres_url)
    second: subprocess.Popen[str] | None = None
    try:
        second, second_url = replica(tmp_path / "b", postgres_url)
        async with http_client(first_url, new.key) as a:
            db = (await call(a, "db_create", engine="sqlite"))["db_id"]
            for sql in ("CREATE TABLE t (n INTEGER)", "INSERT INTO t VALUES (7)"):
                await call(a, "db_query", db_id=db, sql=sql)
            ws = (await call(a, "workspace_create", name="there", size_mib=64))["workspace_id"]
            await call(a, "workspace_write_file", workspace_id=ws, path="a.txt", content="from a")
        async with http_client(second_url, new.key) as b:
            await call(b, "db_query", db_id=db, sql="INSERT INTO t VALUES (8)")
            rows = await call(b, "db_query", db_id=db, sql="SELECT n FROM t ORDER BY n")
            assert rows["rows"] == [[7], [8]]
            read = await call(b, "workspace_read_file", workspace_id=ws, path="a.txt")
            assert read["content"] == "from a"
            # An error raised there reaches the caller here as it was.
            assert "no such table" in await call_error(b, "db_query", db_id=db, sql="SELECT * FROM missing")
            listed = await call(b, "tasks_list", limit=5)
            assert {t["tool"] for t in listed["tasks"]} >= {"db_query", "workspace_read_file"}
        with store.transaction() as session:
            ran_at = set(session.scalars(select(Task.worker_id).where(Task.place.is_not(None))))
            first_worker = session.scalar(select(Worker.id).where(Worker.pid == first.pid))
        assert ran_at == {first_worker}, "the calls through the second ran on the first"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        async with http_client(second_url, new.key) as b:
            error = await call_error(b, "db_query", db_id=db, sql="SELECT n FROM t")
            assert "no server is running" in error or "no server running" in error, error
        # A server started again on that machine takes its calls again; through it, they are deleted.
        first, _ = replica(tmp_path / "a", postgres_url)
        async with http_client(second_url, new.key) as b:
            await until_answers(b, db)
            deleted = [
                await call(b, "db_delete", db_id=db),
                await call(b, "workspace_delete", workspace_id=ws),
            ]
            assert all(d["deleted"] for d in deleted)
        with store.transaction() as session:
            again = session.scalar(select(Worker.id).where(Worker.pid == first.pid))
            ran_at = {session.get(Task, d["task_id"]).worker_id for d in deleted}  # type: ignore[union-attr]
        assert ran_at == {again}, "the deletes ran where the data is, on the first started again"
        assert not left_on_disk(tmp_path / "a" / "workspaces"), "the workspace's mount and image went with it"
        with store.transaction() as session:
            assert session.get(Tenant, "local").held_micros == sum(  # type: ignore[union-attr]
                lease.held_micros for lease in session.scalars(select(Lease).where(Lease.ended_at.is_(None)))
            ), "no task's hold is left: only the live resources' leases"
    finally:
        stop_replicas((first, second), store, docker_driver)
