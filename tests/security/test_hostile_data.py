"""Hostile SQL against the database skill, and a VM looking for a way out. Each attack is
refused with a clear error, and the instance still works afterwards."""

from __future__ import annotations

import time

import anyio
import pytest

from runtime.app import App
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_sqlite_sql_cannot_reach_other_files_or_lift_its_cap(app: App) -> None:
    store = app.settings.home / "cloudskills.db"
    copy = app.settings.home / "stolen.db"
    async with mcp_client(app) as client:
        db = (await call(client, "db_create"))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE t (x)")
        for attack in (
            f"ATTACH DATABASE '{store}' AS control",  # the server's own store: keys, ledger, other tenants
            f"VACUUM INTO '{copy}'",
            "PRAGMA max_page_count = 2147483646",  # lift the size's storage cap
            "PRAGMA writable_schema = 1",
            "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')",
        ):
            refused = await call_error(client, "db_query", db_id=db, sql=attack)
            assert "not allowed here" in refused or "not authorized" in refused, (attack, refused)
        assert not await anyio.Path(copy).exists()
        ok = await call(client, "db_query", db_id=db, sql="PRAGMA table_info(t)")
        assert ok["rows"][0][1] == "x"
        await call(client, "db_delete", db_id=db)


async def test_postgres_sql_stays_inside_its_user_its_transaction_and_its_timeout(app: App) -> None:
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres"))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE t (x int)")
        await call(client, "db_query", db_id=db, sql="INSERT INTO t VALUES (1)")
        for attack in (
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "SELECT pg_read_file('/etc/passwd')",
            "CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'",
            "ALTER ROLE app SUPERUSER",
        ):
            refused = await call_error(client, "db_query", db_id=db, sql=attack)
            assert "PostgreSQL rejected the statement" in refused, (attack, refused)
            assert "denied" in refused or "must be" in refused, (attack, refused)

        # Stepping out of the read-only transaction with a second statement.
        escaped = await call_error(client, "db_query", db_id=db, sql="COMMIT; DELETE FROM t", read_only=True)
        assert "one statement per call" in escaped
        # Switching the server's timeout off inside the statement itself.
        started = time.monotonic()
        slow = await call_error(
            client,
            "db_query",
            db_id=db,
            sql="SELECT set_config('statement_timeout', '0', false), pg_sleep(30)",
            timeout_s=1,
        )
        assert "timeout_s of 1 s and was cancelled" in slow and time.monotonic() - started < 10
        rows = await call(client, "db_query", db_id=db, sql="SELECT x FROM t")
        assert rows["rows"] == [[1]]
        await call(client, "db_delete", db_id=db)


async def test_a_vm_has_no_network_but_loopback(app: App) -> None:
    async with mcp_client(app) as client:
        vm = (await call(client, "vm_create"))["vm_id"]
        links = await call(client, "vm_exec", vm_id=vm, command="ls /sys/class/net")
        assert links["stdout"].split() == ["lo"]
        await call(client, "vm_delete", vm_id=vm)
