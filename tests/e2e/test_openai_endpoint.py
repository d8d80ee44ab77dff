"""The server's OpenAI-compatible API (/v1), called with the official `openai` client: each
request a task of the key's tenant, admitted, held and settled like an MCP call."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import func, select

from runtime.storage import open_store
from runtime.tenants import create_key, create_tenant, list_keys, revoke_key
from scheduler.models import LedgerEntry, Task, Tenant
from scheduler.store import Store
from skills.inference.engines.llama import DEFAULT_MODEL
from tests.e2e.conftest import first_key, server_env
from tests.loopback import free_port
from tests.mcp_helpers import call, http_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.model]

QUESTION: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@dataclass(frozen=True)
class Api:
    base_url: str  # .../v1
    mcp_url: str
    key: str
    store: Store

    def client(self, key: str | None = None) -> openai.AsyncOpenAI:
        # No retries: a refusal must come back as it is, once.
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=300)
        OPEN_CLIENTS.append(client)
        return client


# Clients a test made, closed on its own event loop when it ends: one closed later by the
# garbage collector would fail whatever test runs then ("Event loop is closed").
OPEN_CLIENTS: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The real server over HTTP on a loopback port (no warm sandboxes: these tests need no Docker)."""
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:  # a file: a pipe nobody reads could fill and stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)],
            env={**server_env(home), "CLOUDSKILLS_POOL_SIZE": "0"},
            stderr=out,
        )
    deadline = time.monotonic() + 120  # a busy 2-core machine imports slowly
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the HTTP server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    store = open_store(f"sqlite:///{home / 'cloudskills.db'}")
    base = f"http://127.0.0.1:{port}"
    yield Api(f"{base}/v1", f"{base}/mcp", key, store)
    store.close()
    proc.terminate()
    proc.wait(timeout=60)
    assert proc.returncode == 0, "the server did not shut down cleanly on SIGTERM"


def ledger(store: Store, task_id: str) -> dict[str, int]:
    with store.transaction() as session:
        rows = session.execute(select(LedgerEntry.item, LedgerEntry.quantity).where(LedgerEntry.task_id == task_id))
        return {item: quantity for item, quantity in rows}


def task(store: Store, task_id: str) -> Task:
    with store.transaction() as session:
        row = session.get(Task, task_id)
        assert row is not None
        return row


def held(store: Store, tenant: str) -> int:
    with store.transaction() as session:
        row = session.get(Tenant, tenant)
        assert row is not None
        return row.held_micros


def tasks_made(store: Store) -> int:
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(Task)) or 0


def assert_billed(store: Store, task_id: str, usage: Any) -> None:
    """The ledger holds exactly the usage the response reported, for this one task."""
    items = ledger(store, task_id)
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    assert items[f"tokens.output:{DEFAULT_MODEL}"] == usage.completion_tokens
    assert items.get(f"tokens.input:{DEFAULT_MODEL}", 0) == usage.prompt_tokens - cached
    assert items.get(f"tokens.cached_input:{DEFAULT_MODEL}", 0) == cached
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_chat_completions_streamed_and_not_are_tasks_billed_their_usage(api: Api) -> None:
    client = api.client()
    answer = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=16, temperature=0, seed=3
    )
    assert answer.id.startswith("chatcmpl-t_") and answer.object == "chat.completion"
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 16
    plain_task = answer.id.removeprefix("chatcmpl-")
    assert_billed(api.store, plain_task, answer.usage)
    assert task(api.store, plain_task).state == "succeeded"

    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finishes: list[str] = []
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        for streamed in chunk.choices:
            if streamed.delta.content:
                pieces.append(streamed.delta.content)
            if streamed.finish_reason:
                finishes.append(streamed.finish_reason)
    assert len({chunk.id for chunk in chunks}) == 1, "every chunk of a stream has the stream's id"
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == [], "the last chunk carries the usage"
    assert 0 < usage.completion_tokens <= 16
    streamed_task = (chunks[-2].model_extra or {})["cloudskills"]["task_id"]
    assert_billed(api.store, streamed_task, usage)
    streamed_result = task(api.store, streamed_task).result or {}
    assert "".join(pieces) == streamed_result["text"], "the chunks make up the text the task returned"

    # Both are tasks of the key's tenant, seen by its MCP tools and billed in its usage.
    async with http_client(api.mcp_url, api.key) as mcp:
        listed = {t["task_id"]: t for t in (await call(mcp, "tasks_list"))["tasks"]}
        usage_rows = (await call(mcp, "billing_usage", group_by=["item"]))["rows"]
    assert listed[plain_task]["tool"] == listed[streamed_task]["tool"] == "inference_generate"
    output_billed = sum(r["quantity"] for r in usage_rows if r["item"] == f"tokens.output:{DEFAULT_MODEL}")
    assert output_billed == answer.usage.completion_tokens + usage.completion_tokens
    assert held(api.store, "local") == 0


async def test_embeddings_and_models(api: Api) -> None:
    client = api.client()
    listed = [model.id async for model in client.models.list()]
    assert DEFAULT_MODEL in listed
    # The client asks for base64 by default and decodes it; floats when asked.
    packed = await client.embeddings.create(model=DEFAULT_MODEL, input=["a cat", "a dog"])
    floats = await client.embeddings.create(model=DEFAULT_MODEL, input="a cat", encoding_format="float")
    assert [item.index for item in packed.data] == [0, 1]
    assert len(packed.data[0].embedding) == len(floats.data[0].embedding) > 100
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-5, abs=1e-6)
    assert packed.usage.prompt_tokens > 0
    task_id = (packed.model_extra or {})["cloudskills"]["task_id"]
    assert ledger(api.store, task_id)[f"tokens.input:{DEFAULT_MODEL}"] == packed.usage.prompt_tokens


async def test_a_budget_refusal_is_an_openai_error_and_costs_nothing(api: Api) -> None:
    create_tenant(api.store, "poor", budget_micros=30)  # a call of 1000 tokens holds about 63
    client = api.client(create_key(api.store, "poor").key)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=1000, stream=stream)
        assert refused.value.status_code == 402, "refused before anything streams, never inside a 200"
        body: Any = refused.value.body
        assert body["type"] == "insufficient_quota" and body["code"] == "budget_exceeded"
        assert "budget" in body["message"] and "a smaller max_tokens" in body["message"], "says what to lower"
    with api.store.transaction() as session:
        tenant = session.get(Tenant, "poor")
        assert tenant is not None and tenant.held_micros == 0
        spent = session.scalars(select(LedgerEntry.amount_micros).where(LedgerEntry.tenant_id == "poor")).all()
    assert sum(spent) == 0


async def test_missing_wrong_and_revoked_keys_get_401(api: Api) -> None:
    async with httpx2.AsyncClient() as raw:
        bare = await raw.get(f"{api.base_url}/models")
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await api.client("csk_not-a-real-key").models.list()
    assert [model.id async for model in api.client().models.list()]
    for key in list_keys(api.store):
        revoke_key(api.store, key.id)
    with pytest.raises(openai.AuthenticationError) as revoked:
        await api.client().chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=4)
    assert revoked.value.status_code == 401
    body: Any = revoked.value.body
    assert body["code"] == "invalid_api_key" and "Bearer" in body["message"]


async def test_an_agents_key_acts_as_that_agent(api: Api) -> None:
    """The key is verified once per request (by the middleware that guards /mcp as well);
    what it found, the tenant and the agent, is what the task acts for."""
    planner = create_key(api.store, "local", agent="planner")
    answer = await api.client(planner.key).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=2, temperature=0
    )
    made = task(api.store, answer.id.removeprefix("chatcmpl-"))
    assert (made.tenant_id, made.agent) == ("local", "planner")
    plain = await api.client().chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=2)
    assert task(api.store, plain.id.removeprefix("chatcmpl-")).agent is None


async def test_bad_requests_are_openai_errors(api: Api) -> None:
    client = api.client()
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="gpt-9", messages=QUESTION, max_tokens=4)
    body: Any = unknown.value.body
    assert body["code"] == "model_not_found" and "inference_models" in body["message"]
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=5000)
    assert "max_tokens 5000 is over" in too_many.value.message
    async with httpx2.AsyncClient() as raw:
        broken = await raw.post(
            f"{api.base_url}/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {api.key}"}
        )
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


async def test_a_max_tokens_of_zero_is_refused_not_taken_as_unset(api: Api) -> None:
    """0 is a value, refused like -1: never read as "not given", which would generate (and
    bill) the default's 512 tokens, or fall through from max_completion_tokens to max_tokens."""
    client = api.client()
    before = tasks_made(api.store)
    with pytest.raises(openai.BadRequestError) as zero:
        await client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, max_tokens=0)
    assert "max_tokens must be at least 1" in zero.value.message
    with pytest.raises(openai.BadRequestError) as zero_completion:
        await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=QUESTION, max_completion_tokens=0, max_tokens=8
        )
    body: Any = zero_completion.value.body
    assert body["type"] == "invalid_request_error" and "max_completion_tokens must be at least 1" in body["message"]
    assert tasks_made(api.store) == before and held(api.store, "local") == 0
    # A max_completion_tokens that is given wins over max_tokens, as in OpenAI's API.
    answer = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_completion_tokens=2, max_tokens=50
    )
    assert answer.usage is not None and answer.usage.completion_tokens <= 2


async def test_image_and_audio_parts_are_refused_before_any_task(api: Api) -> None:
    """The served models read text only: a part they would drop unread is refused, never
    answered (and billed) as if it had not been sent."""
    client = api.client()
    before = tasks_made(api.store)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    for part in (image, audio):
        for stream in (False, True):
            messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(
                    model=DEFAULT_MODEL, messages=messages, max_tokens=4, stream=stream
                )
            body: Any = refused.value.body
            assert body["type"] == "invalid_request_error" and body["code"] == "unsupported_content"
            assert part["type"] in body["message"] and "text parts" in body["message"]
    assert tasks_made(api.store) == before and held(api.store, "local") == 0
    text_parts: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
    answer = await client.chat.completions.create(model=DEFAULT_MODEL, messages=text_parts, max_tokens=2)
    assert answer.usage is not None and answer.usage.completion_tokens > 0


async def test_tools_json_logprobs_and_dimensions_are_refused_not_ignored(api: Api) -> None:
    """What the models cannot give is refused before any task: a client never takes plain
    text for an answer that honoured its tools or its JSON schema."""
    client = api.client()
    before = tasks_made(api.store)
    ask: dict[str, Any] = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    tool: Any = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"tools": [tool]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format 'json_object'"),
        ({"logprobs": True}, "logprobs"),
    ]
    for extra, named in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**ask, **extra)
        body: Any = refused.value.body
        assert body["code"] == "unsupported_parameter" and body["message"].startswith(f"{named} is not supported")
    with pytest.raises(openai.BadRequestError) as shrunk:
        await client.embeddings.create(model=DEFAULT_MODEL, input="a cat", dimensions=64)
    assert "dimensions is not supported" in str(shrunk.value)
    assert tasks_made(api.store) == before and held(api.store, "local") == 0
    plain = await client.chat.completions.create(**ask, tools=[], response_format={"type": "text"}, logprobs=False)
    assert plain.usage is not None and plain.usage.completion_tokens > 0
    listed_only = await client.chat.completions.create(**ask, tools=[tool], tool_choice="none")
    assert listed_only.usage is not None, "tools listed but not to be called are no reason to refuse"


async def test_one_model_is_retrieved_as_it_is_listed(api: Api) -> None:
    client = api.client()
    listed = {model.id: model async for model in client.models.list()}
    one = await client.models.retrieve(DEFAULT_MODEL)
    assert one.model_dump() == listed[DEFAULT_MODEL].model_dump()
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.models.retrieve("gpt-9")
    body: Any = unknown.value.body
    assert body["code"] == "model_not_found" and "/v1/models" in body["message"]
    with pytest.raises(openai.AuthenticationError):
        await api.client("csk_not-a-real-key").models.retrieve(DEFAULT_MODEL)


async def test_unknown_paths_and_wrong_methods_get_openai_errors(api: Api) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {api.key}"}) as raw:
        nowhere = await raw.post(f"{api.base_url}/completions", json={})
        wrong = await raw.get(f"{api.base_url}/chat/completions")
        posted = await raw.post(f"{api.base_url}/models", json={})
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "unknown_url"
    assert "/v1/chat/completions" in nowhere.json()["error"]["message"], "it names what there is"
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error" and "POST" in wrong.json()["error"]["message"]
    assert posted.status_code == 405 and posted.json()["error"]["code"] == "method_not_allowed"


async def test_a_client_that_hangs_up_mid_stream_cancels_its_task(api: Api) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Count from one to a thousand."}],
        "max_tokens": 1500,
        "stream": True,
    }
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {api.key}"}, timeout=300) as raw,
        raw.stream("POST", f"{api.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break  # the first piece of text: hang up now

    def states() -> list[str]:
        with api.store.transaction() as session:
            return list(session.scalars(select(Task.state).where(Task.op == "generate")))

    await until(lambda: states() == ["cancelled"], "the task cancelled", timeout_s=120)
    assert held(api.store, "local") == 0
