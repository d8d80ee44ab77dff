"""Databases: `db_create` per engine, and `db_query` against the engine reached directly.

    .venv/bin/python -m bench.db [--creates 5] [--queries 200]

Create: the time of a `db_create` task through the app (admission, the real
instance up and answering, the record and the bill), for each engine. Query:
`SELECT 1` through `db_query` (a task: admission, a fresh connection, the
statement, settlement) against the same statement on one open connection
(psycopg, or sqlite3), the least a caller could pay, and for PostgreSQL a new
connection per statement (what a stateless client pays), measured in the same run.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import psycopg

from bench.common import summary
from runtime.app import App
from runtime.settings import Settings


async def timed_call(app: App, tool: str, **arguments: object) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    result = await app.call(app.settings.tenant, tool, dict(arguments))
    return (time.perf_counter() - start) * 1000, result.model_dump()


async def bench(creates: int, queries: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home:
        app = App(Settings(home=Path(home), pool_size=0))
        async with app.running():
            for engine in ("sqlite", "postgres"):
                samples, made = [], []
                for _ in range(creates):
                    ms, created = await timed_call(app, "db_create", engine=engine)
                    samples.append(ms)
                    made.append(created)
                print(summary(f"db_create {engine}", samples))

                db = made[0]
                through = [
                    (await timed_call(app, "db_query", db_id=db["db_id"], sql="SELECT 1"))[0] for _ in range(queries)
                ]
                direct = direct_queries(engine, str(db["connection_string"]), queries)
                print(summary(f"db_query SELECT 1 ({engine})", through))
                print(summary(f"  baseline: one open connection ({engine})", direct))
                if engine == "postgres":
                    fresh = [fresh_connection_query(str(db["connection_string"])) for _ in range(queries)]
                    print(summary("  baseline: a new connection per query", fresh))
                    print(f"  ratio: {statistics.median(through) / statistics.median(fresh):.2f}x that median")
                print(f"  ratio: {statistics.median(through) / statistics.median(direct):.1f}x the direct median")
                for created in made:
                    await app.call(app.settings.tenant, "db_delete", {"db_id": created["db_id"]})
        app.close()


def direct_queries(engine: str, connection_string: str, count: int) -> list[float]:
    samples = []
    if engine == "sqlite":
        conn: sqlite3.Connection | psycopg.Connection = sqlite3.connect(connection_string.removeprefix("sqlite:///"))
    else:
        conn = psycopg.connect(connection_string, autocommit=True)
    with conn:
        for _ in range(count):
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def fresh_connection_query(connection_string: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(connection_string, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchall()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    anyio.run(bench, args.creates, args.queries)


if __name__ == "__main__":
    main()
