"""Small helpers the benchmarks share: timing and the summary they print."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
