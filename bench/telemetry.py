"""What seeing the cloud costs: the console's page load and /metrics' latency with 1,000 tasks
in the store, and the scheduler's no-op tasks/s with the process's observer against none.

    .venv/bin/python -m bench.telemetry [--tasks 1000] [--requests 50] [--noop 2000] [--rounds 3]

The pages are served by a real ``cloudskills serve --http`` on the store (a subprocess, no
warm pool) and fetched over loopback, signed in as the tenant (the console) and with the
operator's key (/metrics); the store holds ``--tasks`` tasks of a few ops and two agents,
with their ledger. Baseline for the pages: the same server's answer to an unauthenticated
/mcp request (a 401, no store work). For the scheduler: bench.scheduler's no-op op, with
the scheduler's default observer (none) against the process's (metrics and log context;
then with traces too, recorded by the OpenTelemetry SDK into memory).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from bench.scheduler import NOOP, fresh_store
from runtime.app import App
from runtime.metrics import TaskMetrics
from runtime.settings import load_settings
from runtime.telemetry import Telemetry
from sandbox.docker import DockerDriver
from scheduler.observe import NO_OBSERVER
from scheduler.pricing import PriceCatalog, Usage
from scheduler.store import Store
from scheduler.task_rows import Claimed
from scheduler.tasks import Scheduler

OPERATOR = "bench-operator-key"


async def fill(home: Path, tasks: int) -> str:
    """A store with ``tasks`` tasks (five SQLite databases made, queried and deleted, balances
    read, by two agents); the tenant's key."""
    os.environ["CLOUDSKILLS_HOME"] = str(home)
    app = App(load_settings(auto_confirm=True, pool_size=0), DockerDriver("unix:///nonexistent.sock"))
    assert app.first_key is not None
    async with app.running(serving=False):
        databases = []
        for _ in range(5):
            made = await app.call("local", "db_create", {"engine": "sqlite"}, agent="planner")
            databases.append(made.unwrap()["db_id"])
        for i in range(tasks - 10):
            agent = ("planner", "coder")[i % 2]
            if i % 3 == 0:
                await app.call("local", "db_query", {"db_id": databases[i % 5], "sql": "SELECT 1"}, agent=agent)
            else:
                await app.call("local", "billing_balance", {}, agent=agent)
        for db_id in databases:
            await app.call("local", "db_delete", {"db_id": db_id})
    app.close()
    return app.first_key.key


def timed(client: httpx2.Client, url: str, requests: int, **options: object) -> list[float]:
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        answer = client.get(url, **options)  # type: ignore[arg-type]
        took.append(time.perf_counter() - began)
        assert answer.status_code in (200, 401), answer.status_code
    return took


def pages(tasks: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        key = anyio.run(fill, home, tasks)
        port = 18000 + os.getpid() % 1000
        env = {**os.environ, "CLOUDSKILLS_HOME": str(home), "CLOUDSKILLS_POOL_SIZE": "0"}
        env["CLOUDSKILLS_OPERATOR_KEY"] = OPERATOR
        server = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx2.Client(base_url=base, timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        client.get("/console/login")
                        break
                    except httpx2.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                form = client.get("/console/login").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', form)
                assert csrf is not None
                signed = client.post("/console/login", data={"key": key, "csrf": csrf.group(1)})
                assert signed.status_code == 303
                timed(client, "/console/", 3)  # warm up templates and caches
                console = timed(client, "/console/", requests)
                metrics = timed(client, "/metrics", requests, headers={"Authorization": f"Bearer {OPERATOR}"})
                floor = timed(client, "/mcp", requests)
                size = len(client.get("/console/").content)
                scraped = client.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR}"}).text
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"store: {tasks} tasks; console page {size / 1024:.0f} KiB, /metrics {len(scraped) / 1024:.0f} KiB")
    for name, took in (
        ("GET /console/ (signed in)", console),
        ("GET /metrics (operator)", metrics),
        ("baseline: 401 on /mcp", floor),
    ):
        ordered = sorted(took)
        p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
        print(
            f"{name:28s} median {statistics.median(took) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  "
            f"({requests} requests)"
        )


async def noop_tasks(store: Store, tasks: int, observer: object | None) -> float:
    scheduler = Scheduler(store, PriceCatalog.load(), concurrency=16)
    scheduler.bind(NOOP)
    if observer is not None:
        scheduler.observer = observer  # type: ignore[assignment]
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        start = time.perf_counter()
        async with anyio.create_task_group() as callers:
            for _ in range(tasks):
                callers.start_soon(scheduler.run, "bench", NOOP, {})
        elapsed = time.perf_counter() - start
        group.cancel_scope.cancel()
    return tasks / elapsed


def observer_cost(tasks: int, rounds: int) -> None:
    metrics = SimpleNamespace(tasks=TaskMetrics(CollectorRegistry()))
    observed = Telemetry(metrics, traced=False)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
    traced = Telemetry(metrics, traced=True)  # type: ignore[arg-type]
    results: dict[str, list[float]] = {"no observer": [], "metrics + logs": [], "metrics + logs + traces": []}
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(rounds):
            for index, (name, observer) in enumerate(zip(results, (None, observed, traced), strict=True)):
                store = fresh_store(directory, f"s{round_}-{index}.db")
                results[name].append(anyio.run(noop_tasks, store, tasks, observer))
                store.close()
    hooks_cost({"no observer": NO_OBSERVER, "metrics + logs": observed, "metrics + logs + traces": traced})
    base = statistics.median(results["no observer"])
    for name, rates in results.items():
        median = statistics.median(rates)
        print(
            f"scheduler no-op tasks/s, {name:24s} median {median:6.0f}  ratio {median / base:.3f}  ({tasks} x {rounds})"
        )


def hooks_cost(observers: dict[str, object], calls: int = 20000) -> None:
    """The hooks alone, as one task calls them (admitted, running, settled): CPU per task."""
    for name, observer in observers.items():
        hook: Any = observer
        began = time.perf_counter()
        for i in range(calls):
            task_id = f"t_{i}"
            claimed = Claimed(task_id, "bench", "bench", "noop", {}, 60.0, 0, "agent")
            hook.admitted(task_id, "bench", "noop", "bench", "agent", time.time_ns())
            with hook.running(claimed):
                pass
            hook.settled(task_id, claimed, "succeeded", 0, Usage(), None)
        per_task = (time.perf_counter() - began) / calls
        print(f"observer hooks per task, {name:24s} {per_task * 1e6:6.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--noop", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pages(args.tasks, args.requests)
    observer_cost(args.noop, args.rounds)


if __name__ == "__main__":
    main()
