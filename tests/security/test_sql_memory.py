"""Tenant SQL cannot take the server's memory (issue 13, section 3): SQLite statements run in
worker processes whose memory is capped, PostgreSQL's rows reach the server one at a time and
only as many as it returns, and a PostgreSQL instance that runs out of its own memory is
reported as such, then answers again."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runtime.app import App
from skills.db.engines.sqlite_worker import MEMORY_MAX_BYTES, RESULT_MAX_BYTES, VALUE_MAX_BYTES
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MIB = 1 << 20


def peak_rss() -> int:
    """The most this process (the server, with its client) has held in memory since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """From now on, the peak counts from the present (VmHWM starts again from VmRSS)."""
    Path("/proc/self/clear_refs").write_text("5")


async def test_sqlite_sql_cannot_take_the_servers_memory(app: App) -> None:
    async with mcp_client(app) as client:
        db = (await call(client, "db_create"))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE t (a)")
        await call(client, "db_query", db_id=db, sql="INSERT INTO t VALUES (randomblob(8000000))")
        # The reproduction: one value of 600 MB (4 at once took the server from 375 MiB to 3.2 GiB).
        huge = "SELECT length(hex(randomblob(300000000)))"
        # Within the value cap, but 100 copies of one 8 MB value at once: a value cap alone lets this by.
        wide = "SELECT " + ", ".join(["a"] * 100) + " FROM t"
        refusals: dict[str, list[str]] = {huge: [], wide: []}

        async def refuse(sql: str) -> None:
            refusals[sql].append(await call_error(client, "db_query", db_id=db, sql=sql))

        reset_peak_rss()
        before = peak_rss()
        async with anyio.create_task_group() as group:
            for sql in [huge] * 4 + [wide] * 2:
                group.start_soon(refuse, sql)
        grew = peak_rss() - before

        for refused in refusals[huge]:
            assert f"larger than the {VALUE_MAX_BYTES // MIB} MiB a database value may be" in refused, refused
        for refused in refusals[wide]:
            assert f"more than the {MEMORY_MAX_BYTES // MIB} MiB of memory a SQLite query may use" in refused, refused
        assert grew < 64 * MIB, f"the server's memory grew by {grew // MIB} MiB"

        # Nothing was left broken: the value is there, and reads in parts.
        rows = await call(client, "db_query", db_id=db, sql="SELECT length(a), length(substr(a, 1, 1000)) FROM t")
        assert rows["rows"] == [[8000000, 1000]]
        await call(client, "db_delete", db_id=db)


async def test_postgres_out_of_memory_is_told_and_the_instance_answers_again(app: App) -> None:
    async with mcp_client(app) as client:
        db = (await call(client, "db_create", engine="postgres", size="small"))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE t (x int)")
        await call(client, "db_query", db_id=db, sql="INSERT INTO t VALUES (1)")

        # 1,000 rows of 1 MB: the server keeps the rows it returns, never the whole result.
        rows_of_1_mb = "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)"
        reset_peak_rss()
        before = peak_rss()
        first = await call(client, "db_query", db_id=db, sql=rows_of_1_mb, max_rows=1)
        too_much = await call_error(client, "db_query", db_id=db, sql=rows_of_1_mb)
        grew = peak_rss() - before
        assert len(first["rows"]) == 1 and first["truncated"] is True
        assert f"more than the {RESULT_MAX_BYTES // MIB} MiB one answer may carry" in too_much, too_much
        assert grew < 64 * MIB, f"the server's memory grew by {grew // MIB} MiB"

        # 1 GB of text in an instance of 256 MiB: the kernel kills the backend, PostgreSQL restarts.
        refused = await call_error(client, "db_query", db_id=db, sql="SELECT length(repeat('x', 1000000000))")
        assert "ran out of memory" in refused and "256 MiB" in refused, refused
        assert "restarted" in refused and "answers again" in refused, refused
        assert "Fix the SQL" not in refused

        rows = await call(client, "db_query", db_id=db, sql="SELECT x FROM t")
        assert rows["rows"] == [[1]]
        await call(client, "db_delete", db_id=db)
