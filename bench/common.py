"""Small helpers the benchmarks share: timing and the summary they print."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from runtime.storage import open_store
from runtime.tenants import DEFAULT_TENANT, bootstrap, create_key


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, samples_ms: list[float]) -> str:
    return (
        f"{name:<42} n={len(samples_ms):<4} p50={statistics.median(samples_ms):8.1f} ms  "
        f"p99={percentile(samples_ms, 0.99):8.1f} ms  min-max={min(samples_ms):.1f}-{max(samples_ms):.1f} ms"
    )


@dataclass(frozen=True)
class HttpServer:
    url: str
    key: str
    process: Process


@asynccontextmanager
async def http_server(home: str, env: dict[str, str] | None = None) -> AsyncIterator[HttpServer]:
    """`cloudskills serve --http` on a data dir of its own, with its default tenant's key;
    stopped (SIGTERM, so it drains) on the way out."""
    store = open_store(f"sqlite:///{Path(home) / 'cloudskills.db'}")
    new = bootstrap(store) or create_key(store, DEFAULT_TENANT)  # a data dir used before has its tenant
    store.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)]
    environment = {**os.environ, "CLOUDSKILLS_HOME": home, **(env or {})}
    async with await anyio.open_process(command, env=environment, stderr=subprocess.DEVNULL) as process:
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await anyio.sleep(0.05)
            yield HttpServer(f"http://127.0.0.1:{port}/mcp", new.key, process)
        finally:
            process.terminate()
            await process.wait()
