"""An HNSW graph (usearch) of a large namespace's vectors, beside the SQLite store.

sqlite-vec's KNN is an exact scan: a namespace of a few thousand memories is
searched in milliseconds, but at 100k the scan reads 150 MB a query. Above
``GRAPH_FROM`` memories a namespace's meaning side is answered by an HNSW graph
held in this process instead, with each memory's float32 vector (1.6 KiB a
memory: 160 MB for 100k), so that its similarities are exact, as the scan's.

The graph is a cache of the store, never a second truth, which is what keeps it
honest without living inside the store's transactions:

- Every change to a memory's text makes a new ``seq`` (a replacement by key is
  a new row: see ``MemoryManager._put``), and seqs only grow. So a search first
  adds to the graph the namespace's memories past the highest seq it holds (one
  indexed range read), and the graph then holds every live memory.
- What was deleted, replaced or expired since is still in the graph: the
  candidates it returns are checked against the store's rows. When dead
  entries pass a quarter of the graph, it is rebuilt.
- A graph is built in a thread of its own (a few seconds per 10k memories on 2
  cores); until it is ready the exact scan answers. It is saved in the data dir
  with the highest seq it holds, so a restart loads it and catches up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from usearch.index import Index

from skills.embeddings import DIMENSIONS
from skills.memory.engines.base import Vector
from skills.memory.rows import Memory, MemoryNamespace

log = logging.getLogger("cloudskills.memory")

# Below this many memories the exact scan is fast enough (a few ms), and exact.
GRAPH_FROM = 5_000
# The most vectors all graphs of a process hold (1.6 KiB each: 3.2 GB); past it the least
# recently searched graph is let go (its file stays: loaded again on its next search).
MOST_VECTORS = 2_000_000
# New memories a search adds to the graph itself; past that it leaves them to a rebuild.
CATCH_UP_MOST = 2_000
# Candidates the graph gives per one asked for: some may be dead.
OVERSAMPLE = 2
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 96
# What a saved graph is: one saved otherwise is built anew.
FORMAT = f"usearch-cos-f32-{CONNECTIVITY}-{EXPANSION_ADD}"

# Reads (seq, float32 vector) pairs for a namespace's memories with seq > after, in seq order.
VectorReader = Callable[[Session, str, int], list[tuple[int, bytes]]]


def new_index() -> Index:
    return Index(
        ndim=DIMENSIONS,
        metric="cos",
        dtype="f32",
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


@dataclass
class Graph:
    index: Index
    upto: int  # the highest seq it holds
    lock: threading.Lock = field(default_factory=threading.Lock)
    used_at: float = field(default_factory=time.monotonic)

    def add(self, pairs: Sequence[tuple[int, bytes]]) -> None:
        if not pairs:
            return
        keys = np.array([seq for seq, _ in pairs], dtype=np.uint64)
        vectors = np.frombuffer(b"".join(blob for _, blob in pairs), dtype=np.float32).reshape(len(pairs), DIMENSIONS)
        # A build uses both cores; a search's catch-up, one.
        self.index.add(keys, vectors, threads=2 if len(pairs) > 1000 else 1)
        self.upto = max(self.upto, int(keys.max()))


class VectorGraphs:
    """The graphs of this process's large namespaces, by namespace id."""

    def __init__(self, home: Path | None, read: VectorReader, open_session: Callable[[], Any]) -> None:
        self.home = home
        self.read = read
        self.open_session = open_session  # a context manager giving a read session of the store
        self.graphs: dict[str, Graph] = {}
        self.building: set[str] = set()
        self.lock = threading.Lock()
        self.answered = 0  # searches a graph answered rather than the exact scan

    def nearest(self, session: Session, namespace_id: str, vector: Vector, k: int) -> list[tuple[int, float]] | None:
        """The ``k`` live memories nearest ``vector`` by the graph, best first, with their cosine
        similarity; None when the namespace is small or its graph is not ready (scan exactly)."""
        live = session.scalar(select(MemoryNamespace.memories).where(MemoryNamespace.id == namespace_id)) or 0
        graph = self.graphs.get(namespace_id)
        if graph is None:
            if live >= GRAPH_FROM:
                self._build_later(namespace_id)
            return None
        if not self._catch_up(session, namespace_id, graph):
            self._build_later(namespace_id)
            return None
        graph.used_at = time.monotonic()
        with graph.lock:
            found = graph.index.search(vector.astype(np.float32), min(k * OVERSAMPLE, len(graph.index)))
            size = len(graph.index)
        if size > live * 1.25 + 1000:
            self._build_later(namespace_id)  # many dead entries: answer now, rebuild beside
        self.answered += 1
        hits = [(int(key), 1.0 - float(distance)) for key, distance in zip(found.keys, found.distances, strict=True)]
        alive = set(session.scalars(select(Memory.seq).where(Memory.seq.in_([seq for seq, _ in hits]))))
        return [hit for hit in hits if hit[0] in alive][:k]

    def similarity(self, seqs: Sequence[int], vector: Vector) -> dict[int, float]:
        """The cosine similarity to ``vector`` of those of ``seqs`` a graph holds (seqs are
        unique in the store, so whichever graph holds one holds its vector)."""
        found: dict[int, float] = {}
        wanted = np.asarray(vector, dtype=np.float32)
        for graph in list(self.graphs.values()):
            with graph.lock:
                held = [seq for seq in seqs if seq not in found and graph.index.contains(seq)]
                if not held:
                    continue
                stored = np.asarray(graph.index.get(np.array(held, dtype=np.uint64)), dtype=np.float32)
            stored = stored.reshape(len(held), DIMENSIONS)
            cosines = stored @ wanted / np.clip(np.linalg.norm(stored, axis=1) * np.linalg.norm(wanted), 1e-12, None)
            found |= {seq: float(cosine) for seq, cosine in zip(held, cosines, strict=True)}
        return found

    def _catch_up(self, session: Session, namespace_id: str, graph: Graph) -> bool:
        """Add the memories stored past the graph's highest seq; False when too many for a search."""
        newest = session.scalar(select(func.max(Memory.seq)).where(Memory.namespace_id == namespace_id)) or 0
        if newest <= graph.upto:
            return True
        pending = session.scalar(
            select(func.count()).where(Memory.namespace_id == namespace_id, Memory.seq > graph.upto)
        )
        if (pending or 0) > CATCH_UP_MOST:
            return False
        pairs = self.read(session, namespace_id, graph.upto)
        with graph.lock:
            graph.add(pairs)
        return True

    def _build_later(self, namespace_id: str) -> None:
        with self.lock:
            if namespace_id in self.building:
                return
            self.building.add(namespace_id)
        threading.Thread(target=self._build, args=(namespace_id,), name="memory-graph", daemon=True).start()

    def _build(self, namespace_id: str) -> None:
        try:
            graph = self._load(namespace_id) or Graph(new_index(), 0)
            with self.open_session() as session:
                pairs = self.read(session, namespace_id, graph.upto)
            graph.add(pairs)
            self._save(namespace_id, graph)
            self.graphs[namespace_id] = graph
            self._let_go_past(MOST_VECTORS)
            log.info("memory graph of namespace %s: %d vectors", namespace_id, len(graph.index))
        except Exception:
            log.exception("building the memory graph of namespace %s failed; searches scan exactly", namespace_id)
        finally:
            with self.lock:
                self.building.discard(namespace_id)

    def _let_go_past(self, most: int) -> None:
        """Let go of the least recently searched graphs while all hold more than ``most`` vectors."""
        by_use = sorted(self.graphs.items(), key=lambda item: item[1].used_at)
        held = sum(len(graph.index) for _, graph in by_use)
        for namespace_id, graph in by_use[:-1]:  # the newest stays, however large
            if held <= most:
                return
            self.graphs.pop(namespace_id, None)
            held -= len(graph.index)

    def _paths(self, namespace_id: str) -> tuple[Path, Path] | None:
        if self.home is None:
            return None
        return self.home / f"{namespace_id}.usearch", self.home / f"{namespace_id}.json"

    def _load(self, namespace_id: str) -> Graph | None:
        """The saved graph, if it is not too stale to keep (else None: build anew)."""
        paths = self._paths(namespace_id)
        if paths is None or namespace_id in self.graphs or not paths[0].exists() or not paths[1].exists():
            return None
        try:
            saved = json.loads(paths[1].read_text())
            if saved.get("format") != FORMAT:
                return None  # made by another version: build anew
            index = new_index()
            index.load(str(paths[0]))
            return Graph(index, int(saved["upto"]))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None

    def _save(self, namespace_id: str, graph: Graph) -> None:
        paths = self._paths(namespace_id)
        if paths is None:
            return
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        with graph.lock:
            graph.index.save(str(paths[0]))
            paths[1].write_text(json.dumps({"format": FORMAT, "upto": graph.upto}))

    def forget(self, namespace_id: str) -> None:
        """A namespace deleted: its graph and its files go."""
        self.graphs.pop(namespace_id, None)
        paths = self._paths(namespace_id)
        for path in paths or ():
            path.unlink(missing_ok=True)
