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

import pytest

from runtime.storage import open_store
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from tests.e2e.conftest import start_http_server
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


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

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        await used_through(second_url, new.key, made)
        async with http_client(second_url, new.key) as b:
            for db in ("sqlite", "postgres"):
                assert (await call(b, "db_delete", db_id=made[db]))["deleted"]
            assert (await call(b, "workspace_delete", workspace_id=made["workspace"]))["deleted"]
            assert (await call(b, "vm_delete", vm_id=made["vm"]))["deleted"]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        for container in docker_driver.list_labelled({LABEL_STORE: store.store_id}):  # what a failure left
            docker_driver.destroy(container.container_id)
        store.close()
