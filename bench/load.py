"""Load: N concurrent agents over Streamable HTTP for a while, each with its own
session sandbox, running a small loop of commands in it.

    .venv/bin/python -m bench.load [--agents 100] [--seconds 60]

Reports the error rate, p50/p99 of a call under load against the same call from a
single agent on the idle server (the baseline, measured first in the same run),
the server's memory over the run, and the containers left once it stops.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from bench.common import http_server, percentile, summary
from runtime.storage import open_store
from runtime.tenants import update_tenant
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from tests.mcp_helpers import http_client


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []


async def agent(url: str, key: str, until: float, tally: Tally, index: int) -> None:
    try:
        async with http_client(url, key) as client:
            created = await client.call_tool("sandbox_create", {})
            if created.is_error:
                tally.errors.append(created.content[0].text)  # type: ignore[union-attr]
                return
            sandbox_id = created.structured_content["sandbox_id"]  # type: ignore[index]
            step = 0
            while time.monotonic() < until:
                step += 1
                start = time.perf_counter()
                result = await client.call_tool(
                    "sandbox_run_code", {"sandbox_id": sandbox_id, "code": f"n = {step}\nprint(n * {index})"}
                )
                tally.latencies.append((time.perf_counter() - start) * 1000)
                if result.is_error or result.structured_content["stdout"] != f"{step * index}\n":  # type: ignore[index]
                    tally.errors.append(str(result.content[0].text))  # type: ignore[union-attr]
            await client.call_tool("sandbox_destroy", {"sandbox_id": sandbox_id})
    except Exception as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")


async def run(agents: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {"CLOUDSKILLS_WORKERS": str(agents * 2)}
        async with http_server(home, env) as server:
            store = open_store(f"sqlite:///{Path(home) / 'cloudskills.db'}")
            update_tenant(
                store, "local", max_live_sandboxes=agents + 20, max_concurrent_tasks=agents * 4, tasks_per_minute=10**7
            )
            store_id = store.store_id
            store.close()
            url, key = server.url, server.key
            baseline = Tally()
            await agent(url, key, time.monotonic() + 5, baseline, 1)
            memory = [rss_mib(server.process.pid)]
            loaded = Tally()
            until = time.monotonic() + seconds

            async def sample_memory() -> None:
                while time.monotonic() < until:
                    await anyio.sleep(5)
                    memory.append(rss_mib(server.process.pid))

            async with anyio.create_task_group() as group:
                group.start_soon(sample_memory)
                for index in range(agents):
                    group.start_soon(agent, url, key, until, loaded, index)
            memory.append(rss_mib(server.process.pid))
        left = DockerDriver().list_labelled({LABEL_STORE: store_id})
    calls = len(loaded.latencies)
    print(f"load: {agents} agents x {seconds:.0f} s over Streamable HTTP, each looping sandbox_run_code in its sandbox")
    print(
        f"calls: {calls}  ({calls / seconds:.0f}/s)   errors: {len(loaded.errors)}  "
        f"(error rate {100 * len(loaded.errors) / max(calls, 1):.2f}%)"
    )
    for error in loaded.errors[:5]:
        print(f"  error: {error[:200]}")
    print(summary("baseline: one agent, idle server", baseline.latencies))
    print(summary(f"under load: {agents} agents", loaded.latencies))
    print(
        f"ratio loaded/idle p50: {statistics.median(loaded.latencies) / statistics.median(baseline.latencies):.1f}x, "
        f"p99: {percentile(loaded.latencies, 0.99) / percentile(baseline.latencies, 0.99):.1f}x"
    )
    print("server RSS MiB over the run: " + ", ".join(f"{m:.0f}" for m in memory))
    print(f"containers left after the server stopped: {len(left)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    anyio.run(run, args.agents, args.seconds)
