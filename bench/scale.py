"""Replicas on one PostgreSQL: no-op tasks per second and `sandbox_run` per second with 1, 2
and 3 `cloudskills serve --http` replicas, against 1 replica on SQLite, in the same run; then
the 200-concurrent budget race spread over 3 replicas, whose result must be exactly the one a
single server gives.

    .venv/bin/python -m bench.scale [--noop 400] [--runs 40] [--concurrency 16]

Every replica is a fresh server process with default settings but for its store; the calls
go over MCP Streamable HTTP, spread round-robin over the replicas, ``--concurrency`` at once.
A no-op task is `billing_balance` (admission, a task row, settlement; no backend). PostgreSQL
is the `pgserver` package's server, run on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select

from runtime.storage import open_store
from runtime.tenants import bootstrap, update_tenant
from scheduler.models import LedgerEntry, Tenant
from tests.mcp_helpers import http_client

RACE_CALLS, RACE_K, FEE = 200, 8, 1000
FEE_ONLY = f"""
version = "bench-fee-only"
currency = "USD"
[task_fee]
default = 0
"sandbox.run" = {FEE}
[resources.sandbox]
vcpu_hour = 0
gib_hour = 0
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def replicas(count: int, url: str, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """``count`` servers on the store at ``url``; their MCP URLs."""
    processes, urls = [], []
    try:
        for _ in range(count):
            port, home = free_port(), tempfile.mkdtemp(prefix="cloudskills-bench-scale-")
            environment = {**os.environ, "CLOUDSKILLS_HOME": home, "CLOUDSKILLS_DATABASE_URL": url, **(env or {})}
            command = [sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)]
            processes.append(subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("a replica did not start") from None
                    time.sleep(0.05)
            urls.append(f"http://127.0.0.1:{port}/mcp")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def prepared_store(url: str, budget: int | None = None) -> str:
    """Migrate the store, make its tenant without limits that would slow the bench; its key."""
    store = open_store(url)
    new = bootstrap(store)
    assert new is not None
    update_tenant(store, "local", budget_micros=budget, max_concurrent_tasks=10_000, tasks_per_minute=1_000_000)
    store.close()
    return new.key


async def rate(urls: list[str], key: str, tool: str, arguments: dict[str, Any], calls: int, concurrency: int) -> float:
    """Calls per second, ``concurrency`` at once, round-robin over the replicas."""
    left = list(range(calls))
    failures: list[str] = []

    async def worker(index: int) -> None:
        async with http_client(urls[index % len(urls)], key) as client:
            while left:
                left.pop()
                result = await client.call_tool(tool, arguments)
                if result.is_error:
                    failures.append(result.content[0].text)  # type: ignore[union-attr]

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(concurrency):
            group.start_soon(worker, index)
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed, e.g. {failures[0]}")
    return calls / elapsed


async def race(urls: list[str], key: str) -> tuple[int, int]:
    """200 `sandbox_run` at once against a budget of exactly K: (admitted, refused)."""
    outcomes: list[bool] = []

    async def one(index: int) -> None:
        async with http_client(urls[index % len(urls)], key) as client:
            result = await client.call_tool("sandbox_run", {"code": "print(1)", "timeout_s": 30})
            outcomes.append(not result.is_error)

    async with anyio.create_task_group() as group:
        for index in range(RACE_CALLS):
            group.start_soon(one, index)
    return sum(outcomes), len(outcomes) - sum(outcomes)


def books(url: str) -> tuple[int, int, int]:
    store = open_store(url)
    with store.transaction() as session:
        tenant = session.get(Tenant, "local")
        assert tenant is not None
        ledger = int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))) or 0)
        result = tenant.spent_micros, tenant.held_micros, ledger
    store.close()
    return result


def main() -> None:
    import pgserver

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noop", type=int, default=400)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cloudskills-bench-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]

    def postgres() -> str:
        name = f"scale_{uuid.uuid4().hex[:8]}"
        server.psql(f"CREATE DATABASE {name};")
        return str(server.get_uri(name)).replace("postgresql://", "postgresql+psycopg://", 1)

    def sqlite() -> str:
        return f"sqlite:///{tempfile.mkdtemp(prefix='cloudskills-bench-sqlite-')}/cloudskills.db"

    rows = []
    try:
        for label, count, make in (
            ("SQLite, 1 replica", 1, sqlite),
            ("PostgreSQL, 1 replica", 1, postgres),
            ("PostgreSQL, 2 replicas", 2, postgres),
            ("PostgreSQL, 3 replicas", 3, postgres),
        ):
            url = make()
            key = prepared_store(url)
            with replicas(count, url) as urls:
                noop = anyio.run(rate, urls, key, "billing_balance", {}, args.noop, args.concurrency)
                runs = anyio.run(rate, urls, key, "sandbox_run", {"code": "print(1)"}, args.runs, 8)
            rows.append((label, noop, runs))
            print(f"{label}: {noop:.1f} no-op tasks/s, {runs:.2f} sandbox_run/s", flush=True)
        race_rows = []
        for label, count, make in (("SQLite, 1 replica", 1, sqlite), ("PostgreSQL, 3 replicas", 3, postgres)):
            url = make()
            prices = Path(tempfile.mkdtemp()) / "prices.toml"
            prices.write_text(FEE_ONLY)
            key = prepared_store(url, budget=RACE_K * FEE)
            with replicas(count, url, {"CLOUDSKILLS_PRICES_FILE": str(prices), "CLOUDSKILLS_WORKERS": "32"}) as urls:
                admitted, refused = anyio.run(race, urls, key)
            spent, held, ledger = books(url)
            race_rows.append((label, admitted, refused, spent, held, ledger))
    finally:
        server.cleanup()
    base = rows[0]
    print(f"\nload {os.getloadavg()[0]:.1f}; calls over MCP Streamable HTTP, round-robin over the replicas")
    print("| store | no-op tasks/s | vs SQLite | sandbox_run/s | vs SQLite |\n|---|---|---|---|---|")
    for label, noop, runs in rows:
        print(f"| {label} | {noop:.1f} | {noop / base[1]:.2f}x | {runs:.2f} | {runs / base[2]:.2f}x |")
    print(f"\n{RACE_CALLS} concurrent sandbox_run against a budget of exactly {RACE_K} (fee {FEE} micros each):")
    print("| store | admitted | refused | spent | held after | ledger |\n|---|---|---|---|---|---|")
    for label, admitted, refused, spent, held, ledger in race_rows:
        print(f"| {label} | {admitted} | {refused} | {spent} | {held} | {ledger} |")
    exact = all(r[1] == RACE_K and r[3] == RACE_K * FEE and r[4] == 0 and r[5] == RACE_K * FEE for r in race_rows)
    print("exact on both:", exact)


if __name__ == "__main__":
    main()
