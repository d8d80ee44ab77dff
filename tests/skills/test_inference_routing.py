"""The fast tier of model pools and of the batch engine's text: routing policies, the
circuit breaker, retries before the first token, and stop sequences, on in-memory
engines (tests/skills/test_inference_pools.py runs pools on real servers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from common.errors import BackendTimeout, BackendUnavailable, InvalidInput
from skills.inference.engines.base import Completion, Embeddings, GenerateRequest, Message, ModelSpec, OnText
from skills.inference.engines.llama_lanes import (
    COPY_WORTH,
    Lane,
    common_prefix,
    lane_score,
    match_lanes,
    prefix_source,
    share_lanes,
)
from skills.inference.engines.llama_text import TextOut
from skills.inference.pool import Pool

pytestmark = pytest.mark.anyio

ASK = GenerateRequest(messages=[Message("user", "hi")], max_tokens=8, temperature=0)


@dataclass
class Fake:
    """An engine that answers "ok" (after ``gate`` opens, if given) or fails as told."""

    spec: ModelSpec
    fail: Exception | None = None
    fail_after_text: bool = False
    gate: anyio.Event | None = None
    calls: int = 0
    running: int = 0
    most_running: int = field(default=0)

    def availability(self) -> tuple[bool, str]:
        return True, "in memory"

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None and not self.fail_after_text:
                raise self.fail
            await on_text("ok")
            if self.fail is not None:
                raise self.fail
            return Completion("ok", "stop", 3, 0, 1)
        finally:
            self.running -= 1

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        self.calls += 1
        return Embeddings([[1.0] for _ in texts], len(texts))

    async def close(self) -> None:
        pass


def fake(name: str, slots: int = 1, output_cost: int = 0, **behaviour: object) -> Fake:
    spec = ModelSpec(name=name, engine="openai", base_url="http://x", slots=slots)
    spec.cost.output_per_mtok = output_cost
    return Fake(spec, **behaviour)  # type: ignore[arg-type]


def pool_of(*engines: Fake, policy: str = "least_loaded", failures: int = 2) -> Pool:
    spec = ModelSpec.model_validate(
        {
            "name": "pool",
            "engine": "pool",
            "policy": policy,
            "breaker_failures": failures,
            "backends": [e.spec.model_dump() for e in engines],
        }
    )
    return Pool(spec, list(engines))


async def ignore(text: str) -> None:
    pass


async def test_least_loaded_spreads_requests_by_load_for_capacity() -> None:
    gate = anyio.Event()
    small, big = fake("small", slots=1, gate=gate), fake("big", slots=3, gate=gate)
    pool = pool_of(small, big)
    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(pool.generate, "t", ASK, ignore)
        await anyio.wait_all_tasks_blocked()
        in_flight = {b.name: b.in_flight for b in pool.backends}
        gate.set()
    assert in_flight == {"small": 1, "big": 3}


async def test_cheapest_goes_to_the_cheaper_backend_and_past_it_when_it_fails() -> None:
    dear, cheap = fake("dear", output_cost=900), fake("cheap", output_cost=100)
    pool = pool_of(dear, cheap, policy="cheapest")
    await pool.generate("t", ASK, ignore)
    assert (dear.calls, cheap.calls) == (0, 1)
    cheap.fail = BackendUnavailable("the endpoint of 'cheap' cannot be reached (ConnectError); check it.")
    answer = await pool.generate("t", ASK, ignore)
    assert answer.text == "ok" and (dear.calls, cheap.calls) == (1, 2)
    assert pool.backends[1].last_error is not None and "cannot be reached" in pool.backends[1].last_error


async def test_lowest_p95_measures_each_backend_then_prefers_the_fastest() -> None:
    slow, quick = fake("slow"), fake("quick")
    pool = pool_of(slow, quick, policy="lowest_p95")
    slow_backend, quick_backend = pool.backends
    for ms in (900.0, 950.0, 1000.0, 1100.0, 1200.0):
        slow_backend.latency.add(ms)
    await pool.generate("t", ASK, ignore)
    assert quick.calls == 1, "an unmeasured backend is tried first, to measure it"
    for ms in (10.0, 12.0, 15.0, 11.0):
        quick_backend.latency.add(ms)
    for _ in range(3):
        await pool.generate("t", ASK, ignore)
    assert (slow.calls, quick.calls) == (0, 4)
    status = {s.name: s for s in pool.status()}
    assert status["quick"].samples == 4 + 4 and status["quick"].ttft_p95_ms is not None
    assert status["slow"].ttft_p95_ms == 1200.0


async def test_a_failing_backend_leaves_the_rotation_and_is_probed_after_its_wait() -> None:
    flaky, steady = fake("flaky"), fake("steady")
    flaky.fail = BackendTimeout("the endpoint of 'flaky' did not answer within 1 s; try again later.")
    pool = pool_of(flaky, steady, failures=2)
    for _ in range(2):
        assert (await pool.generate("t", ASK, ignore)).text == "ok"
    assert {s.name: s.health for s in pool.status()} == {"flaky": "out_of_rotation", "steady": "healthy"}
    await pool.generate("t", ASK, ignore)
    assert flaky.calls == 2, "out of rotation: not tried while another backend can serve"
    breaker = pool.backends[0].breaker
    assert breaker.opened_at is not None
    breaker.opened_at -= breaker.options.open_s  # its wait is over
    assert pool.status()[0].health == "half_open"
    flaky.fail = None
    await pool.generate("t", ASK, ignore)
    assert flaky.calls == 3 and pool.status()[0].health == "healthy", "the probe succeeded: back in rotation"


async def test_failures_after_text_are_not_retried_and_every_backend_out_of_rotation_is_still_tried() -> None:
    breaks = fake("breaks", fail=BackendUnavailable("the endpoint of 'breaks' failed (HTTP 502: x); try again later."))
    breaks.fail_after_text = True
    other = fake("other")
    pool = pool_of(breaks, other)
    with pytest.raises(BackendUnavailable):
        await pool.generate("t", ASK, ignore)
    assert other.calls == 0, "text had reached the caller: the reply cannot restart elsewhere"

    down = fake("down", fail=BackendUnavailable("the endpoint of 'down' cannot be reached (ConnectError); check it."))
    alone = pool_of(down, failures=1)
    for _ in range(2):
        with pytest.raises(BackendUnavailable, match="cannot be reached"):
            await alone.generate("t", ASK, ignore)
    assert down.calls == 2, "a breaker alone never refuses a request: the last backend is tried anyway"


async def test_the_callers_errors_and_cancellations_are_not_the_backends_fault() -> None:
    refusing = fake("refusing", fail=InvalidInput("the endpoint of 'refusing' refused the request: too long"))
    other = fake("other")
    pool = pool_of(refusing, other, failures=1)
    with pytest.raises(InvalidInput):
        await pool.generate("t", ASK, ignore)
    assert other.calls == 0 and pool.status()[0].health == "healthy"

    slow = fake("slow", gate=anyio.Event())
    waiting = pool_of(slow, failures=1)
    with anyio.move_on_after(0.05):
        await waiting.generate("t", ASK, ignore)
    assert waiting.status()[0].health == "healthy" and waiting.backends[0].in_flight == 0


async def test_every_backend_failing_names_each_and_keeps_the_last_error_kind() -> None:
    one = fake("one", fail=BackendUnavailable("the endpoint of 'one' cannot be reached (ConnectError); check it."))
    two = fake("two", fail=BackendTimeout("the endpoint of 'two' did not answer within 1 s; try again later."))
    with pytest.raises(BackendTimeout) as failed:
        await pool_of(one, two).generate("t", ASK, ignore)
    assert "every backend of 'pool' failed" in failed.value.message and "did not answer within" in failed.value.message


def test_stop_sequences_are_cut_even_across_tokens_and_text_before_them_is_given_out() -> None:
    out = TextOut(["END", "\n\n"])
    given = [out.add(piece) for piece in (b"Hello E", b"N", b"Dafter")]
    assert given == ["Hello ", "", ""] and out.stopped and out.text == "Hello "
    held = TextOut(["STOP"])
    assert [held.add(b"a ST"), held.add(b"ar")] == ["a ", "STar"]
    assert held.finish() == "" and held.text == "a STar"


def test_multibyte_characters_split_across_tokens_are_joined() -> None:
    out = TextOut([])
    snowman = "☃".encode()
    assert [out.add(snowman[:1]), out.add(snowman[1:] + b"!")] == ["", "☃!"]


def test_a_free_lane_is_chosen_for_a_long_shared_prefix_else_the_lowest() -> None:
    prompt = list(range(200))
    lanes = [Lane(0, [9, 9]), Lane(1, list(range(150))), Lane(2, list(range(10)))]
    best = max(lanes, key=lambda lane: lane_score(lane, prompt, 16))
    assert best.seq_id == 1
    short = list(range(20))
    assert max(lanes, key=lambda lane: lane_score(lane, short, 16)).seq_id == 0, "a few tokens are not worth a gap"


def test_a_prompt_starts_from_the_lane_that_holds_most_of_it_when_that_is_worth_a_copy() -> None:
    system = list(range(100))
    prompt = [*system, 500, 501]
    own, other, stranger = Lane(0, [*system[:10], 7]), Lane(1, [*system, 600, 601]), Lane(2, [8, 8])
    assert prefix_source(own, [own, other, stranger], prompt) == (other, 100)
    near = Lane(3, system[: 10 + COPY_WORTH - 1])
    assert prefix_source(own, [own, near, stranger], prompt) == (own, 10), "a few tokens are not worth a copy"
    whole = Lane(4, prompt)
    assert prefix_source(own, [own, whole], prompt) == (whole, len(prompt) - 1), "the last token is computed"
    assert prefix_source(own, [own], prompt) == (own, 10)


def test_requests_that_joined_together_trade_lanes_for_those_holding_their_prompts() -> None:
    system = list(range(40))
    lighthouse, dragon = [*system, 1, 2, 3, 4, 5], [*system, 6, 7, 8, 9, 10]
    # The second wave arrived in the other order: each request took the other's lane.
    lanes = [Lane(3, lighthouse), Lane(4, dragon), Lane(5, [])]
    prompts = [[*dragon, 99], [*lighthouse, 98], [*system, 11]]
    assert match_lanes(prompts, lanes) == [1, 0, 2]
    share_lanes(lanes, prompts)
    assert [(lane.seq_id, lane.tokens) for lane in lanes] == [(4, dragon), (3, lighthouse), (5, [])]


def test_lanes_are_kept_among_equals_and_by_a_request_alone() -> None:
    lanes = [Lane(0, [1, 2]), Lane(1, [1, 2]), Lane(2, [])]
    prompts = [[1, 2, 3], [1, 2, 4], [5]]
    assert match_lanes(prompts, lanes) == [0, 1, 2], "equal prefixes: each keeps its own lane"
    alone = [Lane(7, [9, 9, 9])]
    share_lanes(alone, [[1]])
    assert (alone[0].seq_id, alone[0].tokens) == (7, [9, 9, 9])
    share_lanes([], [])


def test_common_prefix_lengths() -> None:
    cases = [([], [], 0), ([1], [], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2, 3], [1, 9, 3], 1)]
    cases += [([5], [6], 0), (list(range(5000)), [*range(4321), -1], 4321)]
    for a, b, n in cases:
        assert common_prefix(a, b) == n == common_prefix(b, a)
