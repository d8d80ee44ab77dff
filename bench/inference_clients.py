"""The clients bench/inference drives, each keeping one record per request, and the
metrics it computes from them.

Definitions (those of vLLM's benchmark_serving, the field's usual reference):

    TTFT   time to first token: from sending the request to receiving its first text
    TPOT   time per output token, per request: (end-to-end latency - TTFT) / (output tokens - 1)
    ITL    inter-token latency: each gap between two successive pieces of streamed text
           of one request, all requests' gaps pooled. For llama-server a piece is one
           token; our engine paces its pieces (``pieces_per_s``, default 60 in all), so
           with many requests at once a piece holds a few tokens and our ITL is the gap
           between pieces, several tokens' worth

Output tokens are the ones the engine reports (usage), requests per second and output
tokens per second are over the wall time of the whole run.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import httpx2

from bench.common import percentile

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a garden", "a train", "the moon", "a violin"]


def messages(i: int) -> list[dict[str, str]]:
    """A prompt of its own per request (the shared system prompt is the only common prefix)."""
    return [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": f"Tell a short story about {TOPICS[i % len(TOPICS)]}, number {i}."},
    ]


@dataclass
class Record:
    start: float
    pieces: list[float] = field(default_factory=list)  # arrival of each piece of text
    end: float = 0.0
    output_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.pieces[0] - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.end - self.start - self.ttft) / (self.output_tokens - 1)

    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.pieces, self.pieces[1:], strict=False)]


@dataclass
class Run:
    records: list[Record]
    wall: float

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)

    def metrics(self) -> dict[str, float]:
        ttft = [r.ttft * 1000 for r in self.records if r.pieces]
        tpot = [t * 1000 for r in self.records if (t := r.tpot) is not None]
        itl = [gap * 1000 for r in self.records for gap in r.itl()]
        found: dict[str, float] = {
            "requests_per_s": len(self.records) / self.wall,
            "output_tokens_per_s": self.output_tokens / self.wall,
        }
        for name, samples in (("ttft", ttft), ("tpot", tpot), ("itl", itl)):
            for q in (50, 95, 99):
                found[f"{name}_p{q}"] = percentile(samples, q / 100) if samples else float("nan")
        found["ttft_mean"] = statistics.fmean(ttft) if ttft else float("nan")
        return found


async def closed_loop(concurrency: int, requests: int, one: Callable[[int], Awaitable[Record]]) -> Run:
    """``concurrency`` callers, each sending its next request as soon as its last one ended."""
    records: list[Record] = []
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < requests:
            i, next_index = next_index, next_index + 1
            records.append(await one(i))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(caller)
    return Run(records, time.perf_counter() - started)


def openai_stream(
    client: httpx2.AsyncClient, url: str, model: str, max_tokens: int
) -> Callable[[int], Awaitable[Record]]:
    """One streamed /v1/chat/completions request (our server's or llama-server's), read as raw SSE."""

    async def one(i: int) -> Record:
        body = {
            "model": model,
            "messages": messages(i),
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": i,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return await chat_stream(client, url, body, Record(time.perf_counter()))

    return one


async def chat_stream(client: httpx2.AsyncClient, url: str, body: dict[str, Any], record: Record) -> Record:
    """Read one streamed /v1/chat/completions answer as raw SSE into ``record``: when each
    piece of text arrived (appended as it comes), the output tokens, the end."""
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, (await response.aread())[:300]
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                record.output_tokens = int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    record.pieces.append(time.perf_counter())
    record.end = time.perf_counter()
    return record


def mcp_generate(client: Any, max_tokens: int) -> Callable[[int], Awaitable[Record]]:
    """One ``inference_generate`` call over MCP, its text arriving as progress notifications."""

    async def one(i: int) -> Record:
        record = Record(time.perf_counter())

        async def progress(value: float, total: float | None, message: str | None) -> None:
            if message:
                record.pieces.append(time.perf_counter())

        arguments = {"messages": messages(i), "max_tokens": max_tokens, "temperature": 0, "seed": i}
        result = await client.call_tool("inference_generate", arguments, progress_callback=progress)
        record.end = time.perf_counter()
        assert not result.is_error, result.content
        record.output_tokens = int((result.structured_content or {})["usage"]["completion_tokens"])
        return record

    return one


def direct(concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """llama-cpp-python called directly: one context, so concurrent callers take turns on it."""
    from llama_cpp import Llama

    from skills.inference.engines.llama import default_model_path
    from skills.inference.engines.llama_cpu import use_everywhere

    use_everywhere()  # as our engine loads it: no AMX buffers where they crash
    llama = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False)
    llama.create_chat_completion(messages=cast(Any, messages(0)), max_tokens=4)  # loaded and warm
    turn = threading.Lock()
    records: list[Record] = []
    next_index = 0
    counter = threading.Lock()

    def caller() -> None:
        nonlocal next_index
        while True:
            with counter:
                if next_index >= requests:
                    return
                i, next_index = next_index, next_index + 1
            record = Record(time.perf_counter())
            with turn:
                chunks: Any = llama.create_chat_completion(
                    messages=cast(Any, messages(i)), max_tokens=max_tokens, temperature=0, seed=i, stream=True
                )
                for chunk in chunks:
                    if chunk["choices"][0].get("delta", {}).get("content"):
                        record.pieces.append(time.perf_counter())
                    if chunk["choices"][0].get("finish_reason") is None and "content" in chunk["choices"][0].get(
                        "delta", {}
                    ):
                        record.output_tokens += 1
            record.end = time.perf_counter()
            records.append(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    memory = rss_gib(os.getpid())
    llama.close()
    return {"wall": wall, "records": [r.__dict__ for r in records], "rss_gib": memory}


def rss_gib(pid: int) -> float:
    """The resident memory of a process, in GiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return 0.0
