"""Memories: `memory_search` at 10k and 100k memories over MCP, recall@10 of the vector index
against an exact scan, and put throughput, on a SQLite store and on a PostgreSQL one.

    .venv/bin/python -m bench.memory [--sizes 10000,100000] [--stores sqlite,postgres] [--queries 100]

The scaling curve's memories have **synthetic vectors**: clustered unit vectors of 384
dimensions (1,000 centres, noise around each), loaded through the memory manager with
the embedding skipped, since embedding 100k texts takes about an hour on 2 cores. Their
texts are short synthetic sentences, for the full-text side. Searches go through MCP (the
in-memory client, as an agent does) with real query texts, so each one embeds its query
with the real model; the embedder alone and the vector index alone are timed in the same
run, to show where a search's time goes.

Then, as a new user meets it, the same searches go to a fresh `cloudskills serve` of default
settings on that data dir, over MCP stdio and over Streamable HTTP, from the official Python
client in a process of its own, beside a call that searches nothing on the same server.

Recall@10: the vector index's ten nearest (the meaning side of a search) against an exact
scan (numpy, over the same vectors), for query vectors near stored memories, in the same
run. Put throughput: `memory_put_batch` (100 real texts, embedded) and `memory_put`, over MCP.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from mcp import Client, StdioServerParameters
from sqlalchemy import select

from bench.common import http_server, summary
from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import update_tenant
from skills.embeddings import DIMENSIONS, TextEmbedder
from skills.memory.engines.sqlite import SqliteIndex
from skills.memory.memories import MemoryManager
from skills.memory.models import MemoryIn
from skills.memory.rows import Memory, MemoryNamespace
from tests.mcp_helpers import call, http_client, mcp_client

# A vocabulary of made-up words drawn by Zipf's law, as words are in real text: a few common,
# most rare, so the full-text side matches as many memories as it would on real ones.
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
VOCABULARY = 20_000
LOAD_BATCH = 1000
NAMESPACE = "bench"


def synthetic(n: int, rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.float32]]:
    centres = rng.standard_normal((1000, DIMENSIONS)).astype(np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIMENSIONS)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def word(rank: int) -> str:
    letters = []
    while True:
        rank, syllable = divmod(rank, len(SYLLABLES))
        letters.append(SYLLABLES[syllable])
        if rank == 0:
            return "".join(letters)


def sentence(rng: np.random.Generator, n: int) -> str:
    ranks = np.minimum(rng.zipf(1.2, n), VOCABULARY) - 1
    return " ".join(word(int(rank)) for rank in ranks)


@asynccontextmanager
async def store_app(kind: str, home: Path) -> AsyncIterator[App]:
    server: Any = None
    url = None
    if kind == "postgres":
        import pgserver

        server = pgserver.get_server(home / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
        url = str(server.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)
    app = App(Settings(home=home, pool_size=0, database_url=url))
    update_tenant(app.store, "local", max_live_memories=10_000_000)
    try:
        async with app.running():
            yield app
    finally:
        app.close()
        if server is not None:
            server.cleanup()


async def load(app: App, vectors: np.ndarray[Any, np.dtype[np.float32]], start: int, rng: np.random.Generator) -> float:
    """Store memories ``start`` onwards of ``vectors``; seconds taken."""
    manager = app.service(MemoryManager)
    began = time.perf_counter()
    for first in range(start, len(vectors), LOAD_BATCH):
        chunk = vectors[first : first + LOAD_BATCH]
        items = [MemoryIn(text=f"note {first + i}: {sentence(rng, 6)}") for i in range(len(chunk))]
        await manager.put(app.settings.tenant, NAMESPACE, items, vectors=chunk)
    return time.perf_counter() - began


def seqs_in_order(app: App) -> list[int]:
    with app.store.transaction() as session:
        namespace = session.scalars(select(MemoryNamespace.id).where(MemoryNamespace.name == NAMESPACE)).one()
        return list(session.scalars(select(Memory.seq).where(Memory.namespace_id == namespace).order_by(Memory.seq)))


def index_alone(
    app: App, vectors: np.ndarray[Any, np.dtype[np.float32]], queries: np.ndarray[Any, np.dtype[np.float32]]
) -> tuple[list[float], float]:
    """The vector index's top 10 for each query: its latencies, and its recall@10 against numpy's exact scan."""
    manager = app.service(MemoryManager)
    order = {seq: i for i, seq in enumerate(seqs_in_order(app))}
    latencies, hits = [], 0
    with app.store.transaction() as session:
        namespace = session.scalars(select(MemoryNamespace.id).where(MemoryNamespace.name == NAMESPACE)).one()
    for query in queries:
        with app.store.transaction() as session:
            began = time.perf_counter()
            found = manager.index.nearest(session, namespace, query, 10, [])
            latencies.append((time.perf_counter() - began) * 1000)
        exact = set(np.argsort(-(vectors @ query))[:10].tolist())
        hits += len(exact & {order[seq] for seq, _ in found})
    return latencies, hits / (10 * len(queries))


async def graph_built(app: App) -> float:
    """On SQLite, a namespace of ``GRAPH_FROM`` memories or more is searched by an HNSW graph
    built beside the store: start its build and wait for it, as a server's first searches would.
    Seconds it took (0: no graph)."""
    index = app.service(MemoryManager).index
    if not isinstance(index, SqliteIndex) or index.graphs is None:
        return 0.0
    graphs = index.graphs
    with app.store.transaction() as session:
        namespace = session.scalars(select(MemoryNamespace.id).where(MemoryNamespace.name == NAMESPACE)).one()
        began = time.perf_counter()
        index.nearest(session, namespace, synthetic(1, np.random.default_rng(0))[0], 10, [])
    while namespace in graphs.building:  # noqa: ASYNC110 - a thread builds it, and sets no event
        await anyio.sleep(0.1)
    return time.perf_counter() - began if namespace in graphs.graphs else 0.0


def exact_alone(app: App, queries: np.ndarray[Any, np.dtype[np.float32]]) -> list[float]:
    """sqlite-vec's exact scan of the namespace, for each query: what the graph replaces."""
    latencies = []
    with app.store.transaction() as session:
        namespace = session.scalars(select(MemoryNamespace.id).where(MemoryNamespace.name == NAMESPACE)).one()
        for query in queries:
            began = time.perf_counter()
            SqliteIndex().nearest(session, namespace, query, 10, [])
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies


async def timed_calls(client: Client, tool: str, arguments: list[dict[str, Any]]) -> list[float]:
    latencies = []
    for each in arguments:
        began = time.perf_counter()
        await call(client, tool, **each)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def search_arguments(texts: list[str]) -> list[dict[str, Any]]:
    return [{"namespace": NAMESPACE, "query": text, "top_k": 10} for text in texts]


async def measure(app: App, n: int, vectors: Any, queries: int, rng: np.random.Generator) -> None:
    built = await graph_built(app)
    if built:
        print(f"  the namespace's HNSW graph built in {built:.1f} s")
    texts = [sentence(rng, 5) for _ in range(queries)]
    near = vectors[rng.integers(0, n, queries)] + 0.05 * rng.standard_normal((queries, DIMENSIONS)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    async with mcp_client(app, agent="bench") as client:
        await timed_calls(client, "memory_search", search_arguments(texts[:5]))  # warm the model and the caches
        searches = await timed_calls(client, "memory_search", search_arguments(texts))
        floor = await timed_calls(client, "memory_namespaces", [{}] * queries)
    embedder = app.service(TextEmbedder)
    embeds = []
    for text in texts:
        began = time.perf_counter()
        await embedder.embed([text])
        embeds.append((time.perf_counter() - began) * 1000)
    alone, recall = index_alone(app, vectors[:n], near)
    print(summary(f"  memory_search over MCP at {n}", searches))
    print(summary("    of which: the query's embedding", embeds))
    print(summary(f"    of which: the vector index's top 10 at {n}", alone))
    if built:
        print(summary(f"    (sqlite-vec's exact scan alone, which the graph replaces, at {n})", exact_alone(app, near)))
    print(summary("    an MCP call that searches nothing", floor))
    print(f"  recall@10 of the vector index against an exact scan at {n}: {recall:.3f}")


async def over_a_served_mcp(client: Client, transport: str, n: int, texts: list[str]) -> None:
    searches = search_arguments(texts)
    await timed_calls(client, "memory_search", searches[:5])  # loads the model and the saved graph
    await anyio.sleep(3)  # a new server fills its warm sandbox pool: let it finish before timing
    await timed_calls(client, "memory_search", searches[:5])
    print(summary(f"  memory_search over MCP {transport} at {n}", await timed_calls(client, "memory_search", searches)))
    floor = await timed_calls(client, "memory_namespaces", [{}] * len(texts))
    print(summary(f"    an MCP {transport} call that searches nothing", floor))


async def served(home: Path, n: int, queries: int, rng: np.random.Generator) -> None:
    """The searches as a new user makes them: `cloudskills serve` with default settings on the
    data dir just loaded, the client in a process of its own."""
    texts = [sentence(rng, 5) for _ in range(queries)]
    env = {**os.environ, "CLOUDSKILLS_HOME": str(home)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    async with Client(params) as client:
        await over_a_served_mcp(client, "stdio", n, texts)
    async with http_server(str(home)) as server, http_client(server.url, server.key) as client:
        await over_a_served_mcp(client, "HTTP", n, texts)


async def puts(app: App, rng: np.random.Generator) -> None:
    async with mcp_client(app, agent="bench") as client:
        began = time.perf_counter()
        for batch in range(5):
            items = [{"text": f"fact {batch}-{i}: {sentence(rng, 12)}"} for i in range(100)]
            await call(client, "memory_put_batch", namespace="puts", items=items)
        batched = 500 / (time.perf_counter() - began)
        began = time.perf_counter()
        for i in range(50):
            await call(client, "memory_put", namespace="puts", text=f"single {i}: {sentence(rng, 12)}")
        single = 50 / (time.perf_counter() - began)
    print(f"  put throughput: memory_put_batch {batched:.1f} memories/s (100 a call), memory_put {single:.1f} calls/s")


async def bench(sizes: list[int], stores: list[str], queries: int) -> None:
    rng = np.random.default_rng(7)
    vectors = synthetic(max(sizes), rng)
    for kind in stores:
        print(f"{kind} store")
        with tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home:
            loaded = 0
            for n in sorted(sizes):
                async with store_app(kind, Path(home)) as app:
                    seconds = await load(app, vectors[:n], loaded, rng)
                    print(f"  loaded memories {loaded}..{n} in {seconds:.1f} s ({(n - loaded) / seconds:.0f}/s)")
                    loaded = n
                    await measure(app, n, vectors, queries, rng)
                    if n == max(sizes):
                        await puts(app, rng)
                if kind == "sqlite":  # the default store; a PostgreSQL one is the in-process figures only
                    await served(Path(home), n, queries, rng)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cloudskills").setLevel(logging.WARNING)  # no line per task
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    anyio.run(bench, sizes, args.stores.split(","), args.queries)
    print(f"(p50 and p99 of {args.queries} searches each; synthetic memory vectors, real query embeddings)")


if __name__ == "__main__":
    main()
