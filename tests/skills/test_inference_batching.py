"""Continuous batching on the real model: one llama.cpp context decodes every request
together, each on a lane with its own prefix cache, and each billed exactly its own usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.settings import Settings, load_settings
from scheduler.models import LedgerEntry, Task, Tenant
from skills.inference.catalog import ModelCatalog
from skills.inference.engines.llama import DEFAULT_MODEL, LlamaEngine
from tests.mcp_helpers import call, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.model]

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a garden", "a train"]
# Two long, different system prompts (well over 100 tokens each).
POET = "You are a poet who answers every question with a short rhyme about the weather. " * 8
CLERK = "You are a bank clerk who answers in exact figures and never uses adjectives at all. " * 8


@pytest.fixture
async def model_app(settings: Settings) -> AsyncIterator[App]:
    application = App(load_settings(pool_size=0, reap_interval_s=0.2))
    async with application.running():
        yield application
    application.close()


def engine_of(app: App) -> LlamaEngine:
    engine = app.service(ModelCatalog).engine(DEFAULT_MODEL).single
    assert isinstance(engine, LlamaEngine)
    return engine


def ledger_items(app: App, task_id: str) -> dict[str, int]:
    with app.store.transaction() as session:
        rows = session.execute(select(LedgerEntry.item, LedgerEntry.quantity).where(LedgerEntry.task_id == task_id))
        return {item: quantity for item, quantity in rows}


def held(app: App) -> int:
    with app.store.transaction() as session:
        tenant = session.get(Tenant, app.settings.tenant)
        assert tenant is not None
        return tenant.held_micros


async def test_concurrent_requests_are_decoded_together_and_each_billed_its_own_usage(model_app: App) -> None:
    streamed: dict[int, list[str]] = {i: [] for i in range(len(TOPICS))}
    answers: dict[int, dict[str, Any]] = {}

    async with mcp_client(model_app) as client:

        async def generate(i: int) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if message:
                    streamed[i].append(message)

            messages = [{"role": "user", "content": f"Tell a short story about {TOPICS[i]}."}]
            arguments = {"messages": messages, "max_tokens": 24, "temperature": 0.7, "seed": i}
            result = await client.call_tool("inference_generate", arguments, progress_callback=on_progress)
            assert not result.is_error, result.content
            answers[i] = dict(result.structured_content or {})

        async with anyio.create_task_group() as group:
            for i in range(len(TOPICS)):
                group.start_soon(generate, i)

    batcher = engine_of(model_app).batcher
    assert batcher is not None and batcher.widest == len(TOPICS), "all the requests were decoded in one step"
    for i, out in answers.items():
        assert "".join(streamed[i]) == out["text"], "each request streamed its own text, and only it"
        usage = out["usage"]
        assert 0 < usage["completion_tokens"] <= 24 and usage["prompt_tokens"] > 5
        if out["finish_reason"] == "length":
            assert usage["completion_tokens"] == 24
        items = ledger_items(model_app, out["task_id"])
        assert items[f"tokens.output:{DEFAULT_MODEL}"] == usage["completion_tokens"]
        assert items[f"tokens.input:{DEFAULT_MODEL}"] == usage["prompt_tokens"] - usage["cached_tokens"]
    assert held(model_app) == 0


async def test_each_lane_keeps_its_own_prefix_cache(model_app: App) -> None:
    """Two long system prompts served side by side, then again in the other order: each
    request finds its own prompt in the lane that served it, not the other's."""

    async def both(client: Any, question: str) -> dict[str, dict[str, Any]]:
        outs: dict[str, dict[str, Any]] = {}

        async def one(name: str, system: str) -> None:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            outs[name] = await call(client, "inference_generate", messages=messages, max_tokens=8, temperature=0)

        async with anyio.create_task_group() as group:
            group.start_soon(one, "poet", POET)
            group.start_soon(one, "clerk", CLERK)
        return outs

    async with mcp_client(model_app) as client:
        first = await both(client, "How is the day?")
        again = await both(client, "And tomorrow?")
    for name in ("poet", "clerk"):
        assert first[name]["usage"]["cached_tokens"] < 20, "nothing of either long prompt was cached yet"
        usage = again[name]["usage"]
        assert usage["cached_tokens"] > 100, f"the {name}'s system prompt came from its lane's cache"
        assert usage["cached_tokens"] < usage["prompt_tokens"]
        items = ledger_items(model_app, again[name]["task_id"])
        assert items[f"tokens.cached_input:{DEFAULT_MODEL}"] == usage["cached_tokens"]


async def test_a_prompt_starts_from_another_lanes_cache_when_its_own_lane_holds_less(model_app: App) -> None:
    """A long system prompt computed on one lane is copied to the next request's lane,
    which never held it, while the first lane is taken."""
    question = [{"role": "system", "content": POET}, {"role": "user", "content": "How is the day?"}]
    async with mcp_client(model_app) as client:
        first = await call(client, "inference_generate", messages=question, max_tokens=4, temperature=0)
        engine = engine_of(model_app)
        assert engine.lanes is not None and engine.batcher is not None
        async with engine.lanes.slot("someone else", affinity=lambda lane: -lane.seq_id) as taken:
            assert taken.seq_id == 0 and len(taken.tokens) > 100, "the first request's lane, holding its prompt"
            again = [question[0], {"role": "user", "content": "And tomorrow?"}]
            second = await call(client, "inference_generate", messages=again, max_tokens=4, temperature=0)
    assert first["usage"]["cached_tokens"] < 20
    assert engine.batcher.copies == 1
    usage = second["usage"]
    assert usage["cached_tokens"] > 100, "the system prompt came from the first request's lane"
    items = ledger_items(model_app, second["task_id"])
    assert items[f"tokens.cached_input:{DEFAULT_MODEL}"] == usage["cached_tokens"]
    assert items[f"tokens.input:{DEFAULT_MODEL}"] == usage["prompt_tokens"] - usage["cached_tokens"]


async def test_a_cancelled_request_leaves_its_lane_while_the_others_go_on(model_app: App) -> None:
    engine = engine_of(model_app)
    tenant = model_app.settings.tenant
    long_call = {"messages": [{"role": "user", "content": "Count from one to a thousand."}], "max_tokens": 1500}
    short_call = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12, "temperature": 0}
    doomed_started, other_started = anyio.Event(), anyio.Event()
    outcome: dict[str, Any] = {}

    async def doomed(scope: anyio.CancelScope) -> None:
        async def progress(count: float, message: str | None) -> None:
            doomed_started.set()

        with scope:
            await model_app.call(tenant, "inference_generate", long_call, progress)

    async def other() -> None:
        async def progress(count: float, message: str | None) -> None:
            other_started.set()

        outcome.update((await model_app.call(tenant, "inference_generate", short_call, progress)).unwrap())

    cancel = anyio.CancelScope()
    with anyio.fail_after(300):
        async with anyio.create_task_group() as group:
            group.start_soon(doomed, cancel)
            await doomed_started.wait()
            group.start_soon(other)
            await other_started.wait()  # both are decoding now
            cancel.cancel()
    batcher, lanes = engine.batcher, engine.lanes
    assert batcher is not None and lanes is not None
    assert batcher.widest >= 2 and batcher.busy() == 0
    assert len(lanes.free) == lanes.size, "every lane is free again"
    assert 0 < outcome["usage"]["completion_tokens"] <= 12
    with model_app.store.transaction() as session:
        states = sorted(session.scalars(select(Task.state)).all())
    assert states == ["cancelled", "succeeded"]
    assert held(model_app) == 0


async def test_a_tenant_that_waits_takes_a_lane_back_from_one_that_holds_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One tenant's two long replies hold both lanes; another tenant's short call takes one
    back and ends while they still run; the reply it was taken from waits, goes on from its
    saved cells when a lane is free again, and each is billed what was done, once."""
    from skills.inference.engines.base import GenerateRequest, Message, ModelSpec
    from skills.inference.engines.llama import default_model_path

    engine = LlamaEngine(
        ModelSpec(name="two-lanes", engine="llama", path=str(default_model_path()), context_length=1024, slots=2)
    )
    count = [Message(role="user", content="Count from one to a thousand.")]
    long_calls = [GenerateRequest(messages=count, max_tokens=300, temperature=0) for _ in range(2)]
    streaming = [anyio.Event(), anyio.Event()]
    ended: list[str] = []
    done: dict[str, Any] = {}

    async def hog(i: int) -> None:
        async def on_text(text: str) -> None:
            streaming[i].set()

        done[f"hog {i}"] = await engine.generate("hog", long_calls[i], on_text)
        ended.append(f"hog {i}")

    async def other() -> None:
        for _ in range(3):  # one after another: each takes a lane back
            ask = GenerateRequest(
                messages=[Message(role="user", content="Name a colour.")], max_tokens=6, temperature=0
            )
            done["other"] = await engine.generate("other", ask, ignore)
        ended.append("other")

    async def ignore(text: str) -> None:
        pass

    try:
        await engine.generate("hog", GenerateRequest(messages=count, max_tokens=1, temperature=0), ignore)
        assert engine.batcher is not None
        # No reply ends before its max_tokens (what the model writes is not this test's to know).
        monkeypatch.setattr(engine.batcher.vocabulary, "ends", lambda token: False)
        parked: list[int] = []
        park = engine.batcher._park

        def recorded(seq: Any) -> None:
            parked.append(next(i for i in (0, 1) if seq.request is long_calls[i]))
            park(seq)

        monkeypatch.setattr(engine.batcher, "_park", recorded)
        with anyio.fail_after(600):
            async with anyio.create_task_group() as group:
                group.start_soon(hog, 0)
                group.start_soon(hog, 1)
                await streaming[0].wait()
                await streaming[1].wait()  # both lanes are the hog's
                group.start_soon(other)
        assert engine.batcher is not None
        parks = engine.batcher.parks
    finally:
        await engine.close()
    assert ended[0] == "other", "its call did not wait for the end of a long reply"
    assert parks == 3, "a lane taken back for each call that waited"
    assert sorted(parked) in ([0, 0, 1], [0, 1, 1]), "the hog's replies took turns giving their lane up"
    prompt_tokens = done["other"].prompt_tokens
    for i in (0, 1):
        reply = done[f"hog {i}"]
        assert reply.completion_tokens == 300 and len(reply.text) > 300, "every token, once"
        assert 0 < reply.prompt_tokens != prompt_tokens


async def test_a_reply_cancelled_while_its_lane_was_taken_back_is_billed_what_it_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parked reply whose caller leaves while it waits for a lane ends there: billed the
    tokens it computed and sampled, its lane long gone to the other tenant, nothing left held."""
    from skills.inference.engines.base import GenerateRequest, Message, ModelSpec
    from skills.inference.engines.llama import default_model_path

    engine = LlamaEngine(
        ModelSpec(name="two-lanes", engine="llama", path=str(default_model_path()), context_length=1024, slots=2)
    )
    count = [Message(role="user", content="Count from one to a thousand.")]
    hogs = [GenerateRequest(messages=count, max_tokens=400, temperature=0) for _ in range(2)]
    streaming, other_streaming = [anyio.Event(), anyio.Event()], anyio.Event()
    scopes = [anyio.CancelScope(), anyio.CancelScope()]
    cancelled: list[int] = []

    async def ignore(text: str) -> None:
        pass

    async def hog(i: int) -> None:
        async def on_text(text: str) -> None:
            streaming[i].set()

        with scopes[i]:
            await engine.generate("hog", hogs[i], on_text)
        if scopes[i].cancelled_caught:
            cancelled.append(i)

    async def other() -> None:
        async def on_text(text: str) -> None:
            other_streaming.set()

        ask = GenerateRequest(messages=[Message(role="user", content="Name a colour.")], max_tokens=50, temperature=0)
        await engine.generate("other", ask, on_text)

    try:
        await engine.generate("hog", GenerateRequest(messages=count, max_tokens=1, temperature=0), ignore)
        assert engine.batcher is not None and engine.lanes is not None
        monkeypatch.setattr(engine.batcher.vocabulary, "ends", lambda token: False)
        with anyio.fail_after(600):
            async with anyio.create_task_group() as group:
                group.start_soon(hog, 0)
                group.start_soon(hog, 1)
                await streaming[0].wait()
                await streaming[1].wait()
                group.start_soon(other)
                await other_streaming.wait()  # a hog's lane is the other's now
                parked = [
                    i for i in (0, 1) for _, seq in engine._running.values() if seq.parked and seq.request is hogs[i]
                ]
                assert len(parked) == 1
                scopes[parked[0]].cancel()
                await until(lambda: cancelled == parked, "the parked reply to end")
                scopes[1 - parked[0]].cancel()
        lanes = engine.lanes
        assert len(lanes.free) == lanes.size and not lanes.held and not lanes.waiting and not engine._running
        spent = hogs[parked[0]].spent
        assert spent.completion_tokens > 0 and spent.prompt_tokens > 0, "billed what it did before it was parked"
        assert engine.batcher.busy() == 0
    finally:
        await engine.close()
