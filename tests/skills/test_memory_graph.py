"""The HNSW graph that answers a large namespace's meaning side on SQLite: the same
nearest memories as the exact scan, new, replaced and deleted memories seen at once,
kept across a restart, and gone with its namespace. Synthetic vectors (no embedding),
a real SQLite store, a real usearch graph; a low threshold makes a small namespace
"large"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.app import App
from skills.embeddings import DIMENSIONS
from skills.memory.engines import graph
from skills.memory.engines.sqlite import SqliteIndex
from skills.memory.memories import MemoryManager
from skills.memory.models import MemoryIn
from skills.memory.rows import MemoryNamespace
from tests.polling import until
from tests.skills.conftest import memory_settings

pytestmark = pytest.mark.anyio

SIZE = 400
TENANT = "local"


def unit(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = rows.astype(np.float32)
    normed: np.ndarray[Any, np.dtype[np.float32]] = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normed


@pytest.fixture
def vectors() -> np.ndarray[Any, np.dtype[np.float32]]:
    return unit(np.random.default_rng(3).standard_normal((SIZE, DIMENSIONS)))


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "GRAPH_FROM", 100)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(memory_settings(home=tmp_path))
    async with application.running():
        yield application
    application.close()


def put(manager: MemoryManager, items: list[MemoryIn], vectors: np.ndarray[Any, Any]) -> list[int]:
    with manager.store.transaction() as session:
        return [s.memory.seq for s in manager._put(session, TENANT, "big", items, vectors)]


def namespace_id(manager: MemoryManager) -> str:
    with manager.store.transaction() as session:
        found = session.query(MemoryNamespace.id).filter(MemoryNamespace.name == "big").scalar()
    return str(found)


def ranked(manager: MemoryManager, vector: np.ndarray[Any, Any], k: int = 10) -> list[int]:
    """The meaning side's ranking (the graph's, once built)."""
    with manager.store.transaction() as session:
        return [seq for seq, _ in manager.index.nearest(session, namespace_id(manager), vector, k, [])]


def nearest(manager: MemoryManager, vector: np.ndarray[Any, Any], k: int = 10) -> list[tuple[int, float]]:
    """A whole search's hits by meaning alone (no words), with the scores an agent sees."""
    with manager.store.transaction() as session:
        namespace = session.get(MemoryNamespace, namespace_id(manager))
        assert namespace is not None
        hits = manager._search(session, namespace, "", vector, k, {}, -1.0)
        return [(found.memory.seq, found.score) for found in hits]


def exact(manager: MemoryManager, vector: np.ndarray[Any, Any], k: int = 10) -> list[tuple[int, float]]:
    with manager.store.transaction() as session:
        found = SqliteIndex().nearest(session, namespace_id(manager), vector, k, [])
    return [(seq, score) for seq, score in found if score is not None]


async def graph_ready(manager: MemoryManager) -> graph.Graph:
    index = manager.index
    assert isinstance(index, SqliteIndex) and index.graphs is not None
    graphs = index.graphs
    ns = namespace_id(manager)
    nearest(manager, unit(np.ones(DIMENSIONS)))  # the first search starts the build
    await until(lambda: ns in graphs.graphs and ns not in graphs.building, "the namespace's graph to be built")
    return graphs.graphs[ns]


async def test_the_graph_finds_what_the_exact_scan_finds_with_exact_scores(
    app: App, vectors: np.ndarray[Any, Any]
) -> None:
    manager = app.service(MemoryManager)
    put(manager, [MemoryIn(text=f"note {i}") for i in range(SIZE)], vectors)
    await graph_ready(manager)
    assert isinstance(manager.index, SqliteIndex) and manager.index.graphs is not None
    graphs = manager.index.graphs
    answered = graphs.answered
    queries = unit(vectors[:20] + 0.3 * np.random.default_rng(4).standard_normal((20, DIMENSIONS)))
    for query in queries:
        by_graph, by_scan = nearest(manager, query), exact(manager, query)
        assert ranked(manager, query)[:5] == [seq for seq, _ in by_scan][:5]
        assert [seq for seq, _ in by_graph][:5] == [seq for seq, _ in by_scan][:5]
        scan_scores = dict(by_scan)
        for seq, score in by_graph:
            if seq in scan_scores:
                assert score == pytest.approx(scan_scores[seq], abs=2e-6)  # the store's vectors, not half precision
    assert graphs.answered == answered + 2 * len(queries)


async def test_new_replaced_and_deleted_memories_are_seen_by_the_next_search(
    app: App, vectors: np.ndarray[Any, Any]
) -> None:
    manager = app.service(MemoryManager)
    items = [MemoryIn(text=f"note {i}", key=f"k{i}") for i in range(SIZE)]
    put(manager, items[:300], vectors[:300])
    await graph_ready(manager)
    added = put(manager, items[300:], vectors[300:])
    assert nearest(manager, vectors[350])[0][0] == added[50]

    fresh = unit(np.random.default_rng(5).standard_normal((1, DIMENSIONS)))
    (replaced,) = put(manager, [MemoryIn(text="note 7, rewritten", key="k7")], fresh)
    best, score = nearest(manager, fresh[0])[0]
    assert best == replaced and score == pytest.approx(1.0, abs=1e-5)
    assert all(score < 0.5 for seq, score in nearest(manager, vectors[7]) if seq == replaced)

    gone = nearest(manager, vectors[100])[0][0]
    memory_id = manager.get_by_key(TENANT, "big", "k100")[0].id
    assert manager.delete(TENANT, memory_id) == 1
    assert gone not in [seq for seq, _ in nearest(manager, vectors[100])]
    assert gone not in ranked(manager, vectors[100])


async def test_a_graph_is_kept_across_a_restart_and_goes_with_its_namespace(
    tmp_path: Path, vectors: np.ndarray[Any, Any]
) -> None:
    first = App(memory_settings(home=tmp_path))
    async with first.running():
        manager = first.service(MemoryManager)
        put(manager, [MemoryIn(text=f"note {i}") for i in range(300)], vectors[:300])
        built = await graph_ready(manager)
        ns = namespace_id(manager)
        assert built.upto > 0
    first.close()
    saved = tmp_path / "memory-graphs" / f"{ns}.usearch"
    assert saved.exists()

    second = App(memory_settings(home=tmp_path))
    async with second.running():
        manager = second.service(MemoryManager)
        added = put(manager, [MemoryIn(text=f"note {i}") for i in range(300, SIZE)], vectors[300:])
        loaded = await graph_ready(manager)
        assert len(loaded.index) >= 300  # loaded, then caught up
        assert nearest(manager, vectors[399])[0][0] == added[-1]
        assert manager.delete_namespace(TENANT, "big") == SIZE
        assert not saved.exists()
    second.close()


def test_the_graph_library_and_the_embedder_load_in_either_order() -> None:
    """usearch 2.26 crashed the process when onnxruntime was imported after it."""
    for first, second in (("usearch.index", "onnxruntime"), ("onnxruntime", "usearch.index")):
        loaded = subprocess.run([sys.executable, "-c", f"import {first}; import {second}"], check=False)
        assert loaded.returncode == 0, f"importing {second} after {first} failed ({loaded.returncode})"
