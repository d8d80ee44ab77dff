"""A model pool: one served model name for several backends (local llama.cpp contexts,
OpenAI-compatible endpoints), itself an engine.

Every request picks a backend by the pool's policy:

    least_loaded   the fewest requests in flight for its capacity (its slots)
    cheapest       the lowest cost of this request's worst case at the backend's own cost
                   per token (``cost`` in its spec), then the least loaded
    lowest_p95     the lowest measured p95 of time to first token (an unmeasured backend
                   first, to measure it), then the least loaded

A backend that fails (unreachable, an error of its own, too slow) before any text
reached the caller is left for the next one in that order, and after
``breaker_failures`` failures in a row it leaves the rotation for ``breaker_open_s``
(see health.py). Backends out of rotation are still tried, last, when none in rotation
is left: the pool refuses nothing on a breaker's word alone. A failed attempt returns
no usage, so it is never billed; the request is billed once, for the attempt that
answered. A failure after text reached the caller is the request's error: a reply
cannot be restarted elsewhere once its start was shown.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from common.errors import BackendUnavailable, CloudSkillsError
from skills.inference.engines.base import (
    Completion,
    Embeddings,
    Engine,
    GenerateRequest,
    ModelSpec,
    OnText,
    TokenCost,
    prompt_bound,
)
from skills.inference.health import Breaker, BreakerOptions, Health, Latency

T = TypeVar("T")
# The fewest samples for a p95 to steer lowest_p95; with fewer the backend is measured first.
MEASURED = 5


@dataclass
class Backend:
    name: str
    engine: Engine
    breaker: Breaker
    latency: Latency = field(default_factory=Latency)
    in_flight: int = 0
    last_error: str | None = None

    @property
    def capacity(self) -> int:
        return self.engine.spec.slots

    @property
    def cost(self) -> TokenCost:
        return self.engine.spec.cost

    def load(self) -> float:
        return self.in_flight / self.capacity

    def makes_embeddings(self) -> bool:
        return self.engine.spec.embeddings or self.engine.spec.engine == "llama"


@dataclass(frozen=True)
class BackendStatus:
    """One backend as ``inference_models`` shows it."""

    name: str
    engine: str
    available: bool
    detail: str
    health: Health
    back_in_s: float
    in_flight: int
    capacity: int
    failures: int
    last_error: str | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    samples: int
    cost: TokenCost


def pool_spec(spec: ModelSpec) -> ModelSpec:
    """A pool's own spec: the context its smallest backend allows; embeddings if any makes them."""
    context = min((b.context_length for b in spec.backends), default=spec.context_length)
    embeds = any(b.embeddings or b.engine == "llama" for b in spec.backends)
    return spec.model_copy(update={"context_length": context, "embeddings": embeds})


class Pool:
    """Serves one model name through its backends (one, for a model that is not a pool)."""

    def __init__(self, spec: ModelSpec, engines: list[Engine]) -> None:
        self.spec = spec
        options = BreakerOptions(failures=spec.breaker_failures, open_s=spec.breaker_open_s)
        self.backends = [Backend(engine.spec.name, engine, Breaker(options)) for engine in engines]

    @property
    def single(self) -> Engine | None:
        """The one backend of a model that is not a pool."""
        return self.backends[0].engine if len(self.backends) == 1 and self.spec.engine != "pool" else None

    def availability(self) -> tuple[bool, str]:
        if self.single is not None:
            return self.single.availability()
        up = [b.name for b in self.backends if b.engine.availability()[0]]
        if not up:
            return False, f"none of its {len(self.backends)} backends can serve"
        return True, f"a pool of {len(self.backends)} backends ({self.spec.policy}), {len(up)} can serve"

    def status(self) -> list[BackendStatus]:
        now = time.monotonic()
        listed = []
        for b in self.backends:
            available, detail = b.engine.availability()
            listed.append(
                BackendStatus(
                    name=b.name,
                    engine=b.engine.spec.engine,
                    available=available,
                    detail=detail,
                    health=b.breaker.health(now),
                    back_in_s=round(b.breaker.back_in_s(now), 1),
                    in_flight=b.in_flight,
                    capacity=b.capacity,
                    failures=b.breaker.failures,
                    last_error=b.last_error,
                    ttft_p50_ms=b.latency.p(0.50),
                    ttft_p95_ms=b.latency.p(0.95),
                    samples=len(b.latency.samples),
                    cost=b.cost,
                )
            )
        return listed

    def order(self, input_tokens: int, output_tokens: int, embeddings: bool = False) -> list[Backend]:
        """The backends to try, best first: those in rotation by the policy, then the others
        by how soon they are due back."""
        now = time.monotonic()
        usable = [b for b in self.backends if b.engine.availability()[0] and (not embeddings or b.makes_embeddings())]

        def key(b: Backend) -> tuple[float, ...]:
            rank = float(self.backends.index(b))
            if self.spec.policy == "cheapest":
                cost = b.cost.input_per_mtok * input_tokens + b.cost.output_per_mtok * output_tokens
                return (cost, b.load(), rank)
            if self.spec.policy == "lowest_p95":
                p95 = b.latency.p(0.95) if len(b.latency.samples) >= MEASURED else None
                return (0.0 if p95 is None else 1.0, p95 or 0.0, b.load(), rank)
            return (b.load(), rank)

        rotation = sorted((b for b in usable if b.breaker.in_rotation(now)), key=key)
        resting = sorted((b for b in usable if not b.breaker.in_rotation(now)), key=lambda b: b.breaker.back_in_s(now))
        return rotation + resting

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        shown = False

        def attempt(backend: Backend) -> Callable[[], Awaitable[Completion]]:
            started = time.monotonic()
            first: list[float] = []

            async def to_caller(text: str) -> None:
                nonlocal shown
                if not first:
                    first.append(time.monotonic())
                    backend.latency.add((first[0] - started) * 1000)
                shown = True
                await on_text(text)

            async def run() -> Completion:
                completion = await backend.engine.generate(tenant, request, to_caller)
                if not first:  # nothing streamed: the whole reply is its first token
                    backend.latency.add((time.monotonic() - started) * 1000)
                return completion

            return run

        order = self.order(prompt_bound(request.messages), request.max_tokens)
        return await self._first_answer(order, attempt, lambda: shown)

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        def attempt(backend: Backend) -> Callable[[], Awaitable[Embeddings]]:
            async def run() -> Embeddings:
                started = time.monotonic()
                answer = await backend.engine.embed(tenant, texts)
                backend.latency.add((time.monotonic() - started) * 1000)
                return answer

            return run

        order = self.order(sum(len(t.encode()) for t in texts), 0, embeddings=True)
        if not order and self.single is not None:  # the backend's own error says why
            order = self.backends
        return await self._first_answer(order, attempt, lambda: False)

    async def _first_answer(
        self,
        order: list[Backend],
        attempt: Callable[[Backend], Callable[[], Awaitable[T]]],
        shown: Callable[[], bool],
    ) -> T:
        if not order:
            raise BackendUnavailable(
                f"no backend of {self.spec.name!r} can serve now: inference_models shows their health; "
                "try again later or use another model."
            )
        failed: list[tuple[Backend, CloudSkillsError]] = []
        for backend in order:
            backend.in_flight += 1
            backend.breaker.attempt()
            try:
                answer = await attempt(backend)()
            except BackendUnavailable as exc:
                backend.breaker.failed()
                backend.last_error = exc.message
                if shown():
                    raise
                failed.append((backend, exc))
                continue
            except CloudSkillsError:
                backend.breaker.succeeded()  # it answered: the request was at fault, not the backend
                raise
            except BaseException:
                backend.breaker.probing = False  # cancelled: no news of the backend; the next request probes
                raise
            finally:
                backend.in_flight -= 1
            backend.breaker.succeeded()
            return answer
        last = failed[-1][1]
        if len(failed) == 1:
            raise last
        tried = ", ".join(f"{b.name} ({type(e).__name__})" for b, e in failed)
        raise type(last)(f"every backend of {self.spec.name!r} failed ({tried}); the last said: {last.message}")

    async def close(self) -> None:
        for backend in self.backends:
            await backend.engine.close()
