"""Sandbox latency on this machine, each against a baseline measured in the same run.

    .venv/bin/python -m bench.sandboxes [--n 50] [--burst 100]

- acquire: a warm claim from the pool vs a cold start of the same hardened sandbox
- exec round trip: `true` through the resident agent vs `docker exec` of `true`
- first command: create + `echo hi` from the warm pool vs the same from a cold start
- burst: `--burst` sandboxes asked for at once (pool, then cold starts): success rate, p50, p99
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import anyio

from bench.common import summary
from runtime.app import App
from runtime.settings import load_settings
from runtime.tenants import update_tenant
from sandbox.driver import AgentRequest, Command, Limits
from sandbox.templates import TEMPLATES
from skills.sandbox.manager import SandboxManager
from skills.sandbox.records import SandboxRecord

ECHO = AgentRequest(command=Command(argv=("echo", "hi")))
TRUE = AgentRequest(command=Command(argv=("true",)))


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def wait_for_pool(app: App) -> None:
    pool = app.service(SandboxManager).pool
    assert pool is not None
    while pool.ready < pool.size:  # noqa: ASYNC110 - the pool refills on its own schedule
        await anyio.sleep(0.05)


async def create(app: App, warm: bool) -> SandboxRecord:
    template = TEMPLATES["python"]
    sandboxes = app.service(SandboxManager)
    pool, sandboxes.pool = sandboxes.pool, (sandboxes.pool if warm else None)
    try:
        return await sandboxes.create("local", template, Limits(), 600, None)
    finally:
        sandboxes.pool = pool


async def destroy(app: App, record: SandboxRecord) -> None:
    await app.service(SandboxManager).destroy(record.id, "bench")


async def acquire_and_first_command(app: App, n: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {k: [] for k in ("warm", "cold", "first_warm", "first_cold")}
    for _ in range(n):
        for warm in (True, False):
            if warm:
                await wait_for_pool(app)
            start = time.perf_counter()
            record = await create(app, warm)
            results["warm" if warm else "cold"].append(ms_since(start))
            await app.service(SandboxManager).call(record, ECHO, 10)
            results["first_warm" if warm else "first_cold"].append(ms_since(start))
            await destroy(app, record)
    return results


async def exec_round_trips(app: App, n: int) -> tuple[list[float], list[float]]:
    record = await create(app, warm=True)
    container = app.docker.client.containers.get(record.container_id)  # type: ignore[attr-defined]
    agent, docker_exec = [], []
    try:
        for _ in range(n):
            start = time.perf_counter()
            await app.service(SandboxManager).call(record, TRUE, 10)
            agent.append(ms_since(start))
            start = time.perf_counter()
            await anyio.to_thread.run_sync(lambda: container.exec_run(["true"], user="1000:1000"))
            docker_exec.append(ms_since(start))
    finally:
        await destroy(app, record)
    return agent, docker_exec


async def burst(app: App, count: int) -> tuple[int, list[float]]:
    await wait_for_pool(app)
    latencies: list[float] = []
    records: list[SandboxRecord] = []

    async def one() -> None:
        start = time.perf_counter()
        try:
            record = await create(app, warm=True)
            await app.service(SandboxManager).call(record, ECHO, 60)
        except Exception as exc:
            print(f"  burst failure: {exc}")
            return
        latencies.append(ms_since(start))
        records.append(record)

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    async with anyio.create_task_group() as group:
        for record in records:
            group.start_soon(destroy, app, record)
    return len(latencies), latencies


async def main(n: int, burst_size: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=home, pool_size=4)
        app = App(settings)
        update_tenant(app.store, "local", max_live_sandboxes=burst_size + 10, max_concurrent_tasks=10_000)
        async with app.running():
            timings = await acquire_and_first_command(app, n)
            agent, docker_exec = await exec_round_trips(app, n * 4)
            ok, burst_latencies = await burst(app, burst_size)
        app.close()
    print(summary("acquire: warm claim from the pool", timings["warm"]))
    print(summary("baseline: cold start (create+start+attach)", timings["cold"]))
    print(f"  ratio cold/warm (p50): {statistics.median(timings['cold']) / statistics.median(timings['warm']):.0f}x")
    print(summary("exec round trip: `true` via the agent", agent))
    print(summary("baseline: docker exec `true`", docker_exec))
    print(f"  ratio docker exec/agent (p50): {statistics.median(docker_exec) / statistics.median(agent):.0f}x")
    print(summary("first command: create + echo hi, warm", timings["first_warm"]))
    print(summary("baseline: create + echo hi, cold", timings["first_cold"]))
    print(f"burst: {ok}/{burst_size} succeeded ({100 * ok / burst_size:.0f}%)")
    if burst_latencies:
        print(summary(f"burst of {burst_size}: create + echo hi", burst_latencies))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    anyio.run(main, args.n, args.burst)
