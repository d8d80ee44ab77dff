"""The database skill through the MCP client, on real SQLite files and real PostgreSQL servers."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import func, select

from runtime.app import App
from runtime.tenants import ensure_tenant
from scheduler.models import Lease, LedgerEntry
from skills.db.engines.postgres import PostgresEngine
from skills.db.instances import DatabaseManager
from skills.db.rows import Database
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def marks(engine: str, count: int) -> str:
    """The engine's own placeholders: ?, ?, ... for SQLite; $1, $2, ... for PostgreSQL."""
    return ", ".join("?" if engine == "sqlite" else f"${n}" for n in range(1, count + 1))


# A statement that runs for seconds on each engine.
SLOW = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    "postgres": "SELECT pg_sleep(30)",
}


def postgres_leftovers(app: App) -> tuple[dict[str, str], dict[str, str]]:
    engine = app.service(DatabaseManager).engines["postgres"]
    assert isinstance(engine, PostgresEngine)
    return engine.leftovers()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_create_insert_backup_drop_restore_brings_the_rows_back(app: App, engine: str) -> None:
    async with mcp_client(app) as client:
        created = await call(client, "db_create", engine=engine, name="shop")
        db = created["db_id"]
        assert created["state"] == "running" and created["name"] == "shop" and created["create_ms"] > 0

        await call(client, "db_query", db_id=db, sql="CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        await call(client, "db_query", db_id=db, sql="CREATE UNIQUE INDEX items_name ON items (name)")
        sneaky = "x'); DROP TABLE items; --"
        insert = f"INSERT INTO items (id, name) VALUES ({marks(engine, 2)})"
        for i, name in enumerate(("pen", "ink", sneaky)):
            wrote = await call(client, "db_query", db_id=db, sql=insert, params=[i, name])
            assert wrote["rowcount"] == 1
        rows = await call(client, "db_query", db_id=db, sql="SELECT name FROM items ORDER BY id")
        # The parameter was bound: the injection attempt is stored as plain text.
        assert rows["columns"] == ["name"] and rows["rows"] == [["pen"], ["ink"], [sneaky]]

        schema = await call(client, "db_schema", db_id=db)
        (table,) = schema["tables"]
        assert table["name"] == "items" and [c["name"] for c in table["columns"]] == ["id", "name"]
        assert any(i["name"] == "items_name" and i["unique"] for i in table["indexes"])

        snapshot = await call(client, "db_backup", db_id=db)
        assert snapshot["size_bytes"] > 0
        await call(client, "db_query", db_id=db, sql="DROP TABLE items")
        missing = await call_error(client, "db_query", db_id=db, sql="SELECT * FROM items")
        assert "items" in missing and "rejected the statement" in missing

        await call(client, "db_restore", db_id=db, snapshot_id=snapshot["snapshot_id"])
        back = await call(client, "db_query", db_id=db, sql="SELECT name FROM items ORDER BY id")
        assert back["rows"] == [["pen"], ["ink"], [sneaky]]

        described = await call(client, "db_describe", db_id=db)
        assert [s["snapshot_id"] for s in described["snapshots"]] == [snapshot["snapshot_id"]]
        assert [d["db_id"] for d in (await call(client, "db_list"))["databases"]] == [db]

        deleted = await call(client, "db_delete", db_id=db)
        again = await call(client, "db_delete", db_id=db)
        assert deleted["deleted"] is True and again["deleted"] is False
        gone = await call_error(client, "db_query", db_id=db, sql="SELECT 1")
        assert "deleted" in gone
    assert not await anyio.Path(app.settings.home / "snapshots" / db).exists()
    if engine == "sqlite":
        assert not await anyio.Path(created["connection_string"].removeprefix("sqlite:///")).exists()
    else:
        assert postgres_leftovers(app) == ({}, {}), "db_delete left a container or a volume behind"


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_timeouts_read_only_errors_and_truncation(app: App, engine: str) -> None:
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine=engine))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE t (x INTEGER)")
        for i in range(5):
            await call(client, "db_query", db_id=db, sql=f"INSERT INTO t VALUES ({marks(engine, 1)})", params=[i])

        slow = await call_error(client, "db_query", db_id=db, sql=SLOW[engine], timeout_s=0.5)
        assert "timeout_s of 0.5 s and was cancelled" in slow

        refused = await call_error(client, "db_query", db_id=db, sql="DELETE FROM t", read_only=True)
        assert "read_only is set" in refused
        counted = await call(client, "db_query", db_id=db, sql="SELECT count(*) AS n FROM t", read_only=True)
        assert counted["rows"] == [[5]]

        cut = await call(client, "db_query", db_id=db, sql="SELECT x FROM t ORDER BY x", max_rows=2)
        assert cut["rows"] == [[0], [1]] and cut["truncated"] is True

        syntax = await call_error(client, "db_query", db_id=db, sql="SELEC 1")
        assert "syntax error" in syntax and "Fix the SQL" in syntax
        wrong_params = await call_error(client, "db_query", db_id=db, sql=f"SELECT {marks(engine, 2)}", params=[1])
        assert "param" in wrong_params.lower()

        await call(client, "db_delete", db_id=db)


async def test_bad_input_gets_clear_errors_and_leaves_nothing(app: App) -> None:
    async with mcp_client(app) as client:
        unknown = await call_error(client, "db_create", engine="oracle")
        assert "engine" in unknown
        reserved = await call_error(client, "db_create", engine="postgres", name="postgres")
        assert "keeps for itself" in reserved
        bad_name = await call_error(client, "db_create", name="Robert'); DROP")
        assert "name" in bad_name
        first = await call(client, "db_create", name="twin")
        twin = await call_error(client, "db_create", name="twin")
        assert "already have a database named 'twin'" in twin
        missing = await call_error(client, "db_restore", db_id=first["db_id"], snapshot_id="snap_ffffffffffffffff")
        assert "no snapshot" in missing
        await call(client, "db_delete", db_id=first["db_id"])
    with app.store.transaction() as session:
        states = dict(session.execute(select(Database.state, func.count()).group_by(Database.state)).all())
    assert states == {"deleted": 1}


async def test_another_tenant_reaches_neither_the_instance_nor_its_server(app: App) -> None:
    ensure_tenant(app.store, "other")
    async with mcp_client(app) as owner, mcp_client(app, "other") as other:
        mine = await call(owner, "db_create", engine="postgres", name="secret")
        theirs = await call(other, "db_create", engine="postgres", name="secret")
        await call(owner, "db_query", db_id=mine["db_id"], sql="CREATE TABLE t (x int)")

        via_tool = await call_error(other, "db_query", db_id=mine["db_id"], sql="SELECT * FROM t")
        made_up = await call_error(other, "db_query", db_id="db_ffffffffffffffff", sql="SELECT * FROM t")
        assert via_tool.replace(mine["db_id"], "ID") == made_up.replace("db_ffffffffffffffff", "ID")

        # The other tenant's own credentials, pointed at the first tenant's server.
        own = psycopg.conninfo.conninfo_to_dict(theirs["connection_string"])
        target = psycopg.conninfo.conninfo_to_dict(mine["connection_string"])
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(psycopg.conninfo.make_conninfo("", **{**own, "port": target["port"]}), connect_timeout=5)
        # Its real owner connects with what db_create handed over.
        with psycopg.connect(mine["connection_string"], connect_timeout=5, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
            # ... and still is no superuser.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE DATABASE elsewhere")

        await call(owner, "db_delete", db_id=mine["db_id"])
        await call(other, "db_delete", db_id=theirs["db_id"])
    assert postgres_leftovers(app) == ({}, {})


async def test_a_live_instance_is_billed_exactly_for_its_lifetime(app: App) -> None:
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres", size="medium"))["db_id"]
        for _ in range(3):  # renew its lease now, whatever is left of it: one interval billed each time
            assert app.leases.renew_due(within_s=app.leases.lease_s) == []
        await call(client, "db_delete", db_id=db)
    with app.store.transaction() as session:
        row = session.get(Database, db)
        lease = session.get(Lease, db)
        assert row is not None and row.deleted_at is not None and lease is not None
        lines: list[Any] = list(
            session.execute(
                select(LedgerEntry.item, func.sum(LedgerEntry.quantity), func.count())
                .where(LedgerEntry.op == "instance", LedgerEntry.skill == "db")
                .group_by(LedgerEntry.item)
            )
        )
        unbilled_ms = int((row.deleted_at - lease.billed_until).total_seconds() * 1000)
    billed = {item: (quantity, entries) for item, quantity, entries in lines}
    instance_ms, intervals = billed["database.instance_ms.medium"]
    assert intervals >= 2, "metered in intervals, then once at the end"
    assert billed["database.storage_mib_ms"][0] == instance_ms * 10 * 1024
    assert unbilled_ms == 0, "billed up to the moment it was deleted"
    assert lease.held_micros == 0 and lease.end_reason == "deleted"


async def test_db_create_reports_progress(app: App) -> None:
    messages: list[str] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with mcp_client(app) as client:
        created = await client.call_tool("db_create", {"engine": "postgres"}, progress_callback=progress)  # type: ignore[arg-type]
        assert not created.is_error
        db = (created.structured_content or {})["db_id"]
        await call(client, "db_delete", db_id=db)
    assert messages[0] == "provisioning a small postgres database"
    assert messages[-1].startswith(f"{db} accepts connections after")
