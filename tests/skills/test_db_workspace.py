"""db_export and db_import through the MCP client: a query's rows to a CSV file in a real
workspace and back into a table, on real SQLite files and real PostgreSQL servers."""

from __future__ import annotations

import pytest

from runtime.app import App
from runtime.tenants import ensure_tenant
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TRICKY = 'a "quoted", multi\nline value'


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_export_then_import_round_trips_rows_nulls_and_quotes(app: App, engine: str) -> None:
    async with mcp_client(app) as client:
        ws = (await call(client, "workspace_create", name="data", size_mib=32))["workspace_id"]
        db = (await call(client, "db_create", engine=engine))["db_id"]
        for sql in (
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT)",
            "CREATE TABLE copy (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT)",
            f"INSERT INTO items VALUES (1, 'pen', NULL), (2, '', 'empty name'), (3, 'ink', '{TRICKY}')",
        ):
            await call(client, "db_query", db_id=db, sql=sql)

        exported = await call(
            client, "db_export", db_id=db, sql="SELECT * FROM items ORDER BY id", workspace_id=ws, path="out/items.csv"
        )
        assert exported["path"] == "/out/items.csv" and exported["rows"] == 3 and not exported["truncated"]
        assert exported["columns"] == ["id", "name", "note"] and exported["task_id"] and exported["cost"]["micros"] > 0
        text = (await call(client, "workspace_read_file", workspace_id=ws, path="out/items.csv"))["content"]
        # RFC 4180: CRLF, quotes doubled; a NULL is an empty field, an empty string is "".
        assert text == 'id,name,note\r\n1,pen,\r\n2,"",empty name\r\n3,ink,"a ""quoted"", multi\nline value"\r\n'
        assert exported["bytes"] == len(text.encode())

        imported = await call(client, "db_import", db_id=db, workspace_id=ws, path="out/items.csv", table="copy")
        assert imported["rows"] == 3 and imported["columns"] == ["id", "name", "note"]
        back = await call(client, "db_query", db_id=db, sql="SELECT id, name, note, note IS NULL FROM copy ORDER BY id")
        assert [r[:3] for r in back["rows"]] == [[1, "pen", None], [2, "", "empty name"], [3, "ink", TRICKY]]
        assert bool(back["rows"][0][3]) is True

        cut = await call(
            client,
            "db_export",
            db_id=db,
            sql="SELECT id FROM items ORDER BY id",
            workspace_id=ws,
            path="cut.csv",
            max_rows=2,
        )
        assert cut["rows"] == 2 and cut["truncated"] is True

        # Refusals, each saying what to do; a failed import keeps nothing.
        writes = await call_error(client, "db_export", db_id=db, sql="DELETE FROM items", workspace_id=ws, path="x.csv")
        assert "read-only" in writes and "db_query" in writes
        again = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="out/items.csv", table="copy")
        assert "row 1 of the file" in again and "nothing was imported" in again
        await call(
            client, "workspace_write_file", workspace_id=ws, path="bad.csv", content="id,name,colour\r\n9,x,red\r\n"
        )
        unknown = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="bad.csv", table="copy")
        assert "'colour'" in unknown and "its columns: id, name, note" in unknown
        await call(client, "workspace_write_file", workspace_id=ws, path="bad.csv", content="id,name\n10,a\n11\n12,c\n")
        short = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="bad.csv", table="copy")
        assert "row 2 has 1 fields and the header 2" in short
        await call(client, "workspace_write_file", workspace_id=ws, path="bad.csv", content="id,name\n20,a\n21,\n")
        null = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="bad.csv", table="copy")
        assert "row 2 of the file" in null and "nothing was imported" in null
        await call(client, "workspace_write_file", workspace_id=ws, path="bad.csv", content='id,name\n30,"open\n')
        quote = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="bad.csv", table="copy")
        assert "row 1 (line 2 of the file) is not valid CSV" in quote
        nowhere = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="out/items.csv", table="nope")
        assert "no table 'nope'" in nowhere and "CREATE TABLE" in nowhere
        # A file past what an import reads, made by an export (one write of workspace_write_file is smaller).
        many = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 180000) "
            f"SELECT i AS id, '{'x' * 60}' AS name FROM n"
        )
        big = await call(client, "db_export", db_id=db, sql=many, workspace_id=ws, path="big.csv", max_rows=200_000)
        assert big["rows"] == 180_000 and big["bytes"] > 10 << 20
        too_big = await call_error(client, "db_import", db_id=db, workspace_id=ws, path="big.csv", table="copy")
        assert "more than the" in too_big and "split it" in too_big
        count = await call(client, "db_query", db_id=db, sql="SELECT count(*) FROM copy")
        assert count["rows"] == [[3]], "a failed import kept rows"

        await call(client, "db_delete", db_id=db)
        await call(client, "workspace_delete", workspace_id=ws)


async def test_another_tenants_workspace_is_not_found(app: App) -> None:
    ensure_tenant(app.store, "other")
    async with mcp_client(app) as mine, mcp_client(app, tenant="other") as theirs:
        ws = (await call(mine, "workspace_create", name="private", size_mib=32))["workspace_id"]
        await call(mine, "workspace_write_file", workspace_id=ws, path="secret.csv", content="x\n1\n")
        db = (await call(theirs, "db_create"))["db_id"]
        await call(theirs, "db_query", db_id=db, sql="CREATE TABLE t (x INTEGER)")
        read = await call_error(theirs, "db_import", db_id=db, workspace_id=ws, path="secret.csv", table="t")
        write = await call_error(theirs, "db_export", db_id=db, sql="SELECT 1 AS x", workspace_id=ws, path="leak.csv")
        assert "workspace_list" in read and "workspace_list" in write
        listed = await call(mine, "workspace_list_files", workspace_id=ws)
        assert [e["name"] for e in listed["entries"]] == ["secret.csv"]
        await call(theirs, "db_delete", db_id=db)
        await call(mine, "workspace_delete", workspace_id=ws)
