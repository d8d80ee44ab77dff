"""A PostgreSQL instance outlives the server that made it: its data is there after a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sandbox.docker import DockerDriver
from skills.db.engines.postgres import PostgresEngine
from tests.e2e.conftest import first_key, start_http_server, store_of
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_data_survives_a_server_restart(tmp_path: Path, docker_driver: DockerDriver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    proc, url = start_http_server(home, {"CLOUDSKILLS_POOL_SIZE": "0"})
    try:
        async with http_client(url, key) as client:
            db = (await call(client, "db_create", engine="postgres", name="ledger"))["db_id"]
            await call(client, "db_query", db_id=db, sql="CREATE TABLE notes (body text)")
            await call(client, "db_query", db_id=db, sql="INSERT INTO notes VALUES ($1)", params=["kept"])
        proc.send_signal(signal.SIGKILL)  # no chance to tidy up: the instance must not depend on it
        proc.wait(timeout=20)

        proc, url = start_http_server(home, {"CLOUDSKILLS_POOL_SIZE": "0"})
        async with http_client(url, key) as client:
            rows = await call(client, "db_query", db_id=db, sql="SELECT body FROM notes")
            listed = await call(client, "db_list")
            await call(client, "db_delete", db_id=db)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert rows["rows"] == [["kept"]]
    assert [d["state"] for d in listed["databases"]] == ["running"]
    store = store_of(home)
    assert PostgresEngine(docker_driver, store.store_id).leftovers() == ({}, {})
    store.close()
