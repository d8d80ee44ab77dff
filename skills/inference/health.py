"""What a model pool knows of each backend: a circuit breaker and a window of measured latency.

A breaker is closed while the backend answers. After ``failures`` failed attempts in a
row it opens: the backend leaves the rotation for ``open_s`` seconds. Then one request
may probe it (half-open): success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

# healthy: in rotation; out_of_rotation: its breaker is open; half_open: one request may
# probe it (or is probing it) now.
Health = Literal["healthy", "out_of_rotation", "half_open"]


@dataclass(frozen=True)
class BreakerOptions:
    """When a backend leaves the rotation, and for how long."""

    failures: int = 3  # failed attempts in a row that open the breaker
    open_s: float = 30.0  # seconds out of rotation before one request probes it again


@dataclass
class Breaker:
    options: BreakerOptions = field(default_factory=BreakerOptions)
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def health(self, now: float | None = None) -> Health:
        if self.opened_at is None:
            return "healthy"
        return "out_of_rotation" if self.back_in_s(now) > 0 else "half_open"

    def in_rotation(self, now: float | None = None) -> bool:
        """Whether a request may go to the backend now (a closed breaker, or a probe due)."""
        if self.opened_at is None:
            return True
        now = time.monotonic() if now is None else now
        return not self.probing and now - self.opened_at >= self.options.open_s

    def attempt(self) -> None:
        """A request goes to the backend; past an open breaker's wait, it is the probe."""
        if self.opened_at is not None:
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.options.failures:
            self.opened_at = time.monotonic()
        self.probing = False

    def back_in_s(self, now: float | None = None) -> float:
        """Seconds until a probe is due (0 when in rotation)."""
        if self.opened_at is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self.options.open_s - (now - self.opened_at))


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank percentile (the smallest sample with at least q of them at or below it)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q)
    return ordered[int(rank) - 1]


@dataclass
class Latency:
    """The latest ``size`` latencies of successful requests, in milliseconds: time to the
    first token of a reply (the whole call for embeddings and unstreamed replies)."""

    size: int = 200
    samples: deque[float] = field(default_factory=deque)

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        while len(self.samples) > self.size:
            self.samples.popleft()

    def p(self, q: float) -> float | None:
        return percentile(list(self.samples), q) if self.samples else None
