"""Memories' indexes in a SQLite store: sqlite-vec and FTS5, in the store's own file.

Vectors live in a ``vec0`` table partitioned by namespace, so a search reads only
its namespace's vectors; sqlite-vec's KNN is an exact scan of them (SIMD cosine
distance over float32 chunks), so its answers are exact. A search with a
metadata filter scans only the rows the filter keeps. Words live in an FTS5
table over the memories' text (porter stemming), ranked by BM25. Both are
written in the same transaction as the memories' rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, column, func, literal_column, select, table, text
from sqlalchemy.orm import Session

from skills.memory.engines.base import COMMON_WORD, CommonWords, Entry, Vector
from skills.memory.engines.graph import VectorGraphs
from skills.memory.rows import Memory

VECTORS = table("memory_vectors", column("rowid"), column("embedding"))
WORDS = table("memory_words", column("rowid"))
ADD_VECTOR = text("INSERT INTO memory_vectors(rowid, namespace_id, embedding) VALUES (:seq, :namespace_id, :vector)")
ADD_WORDS = text("INSERT INTO memory_words(rowid, text) VALUES (:seq, :text)")
DROP_VECTOR = text("DELETE FROM memory_vectors WHERE rowid = :seq")
# An external-content FTS5 table forgets a row given the text it indexed.
DROP_WORDS = text("INSERT INTO memory_words(memory_words, rowid, text) VALUES ('delete', :seq, :text)")
DISTANCE = text("SELECT vec_distance_cosine(embedding, :vector) FROM memory_vectors WHERE rowid = :seq")
COUNT_CAPPED = text(
    "SELECT count(*) FROM (SELECT m.seq FROM memory_words JOIN memories m ON m.seq = memory_words.rowid "
    "WHERE memory_words MATCH :match AND m.namespace_id = :namespace_id LIMIT :cap)"
)
# A namespace's vectors past a seq, for its graph (one rowid lookup of vec0 each).
VECTORS_PAST = text(
    "SELECT m.seq, v.embedding FROM memories m JOIN memory_vectors v ON v.rowid = m.seq "
    "WHERE m.namespace_id = :namespace_id AND m.seq > :after ORDER BY m.seq"
)
KNN = text(
    "SELECT rowid, distance FROM memory_vectors "
    "WHERE embedding MATCH :vector AND k = :k AND namespace_id = :namespace_id ORDER BY distance"
)


def blob(vector: Vector) -> bytes:
    return vector.astype("float32").tobytes()


def vectors_past(session: Session, namespace_id: str, after: int) -> list[tuple[int, bytes]]:
    rows = session.execute(VECTORS_PAST, {"namespace_id": namespace_id, "after": after})
    return [(int(seq), bytes(embedding)) for seq, embedding in rows]


class SqliteIndex:
    """``graphs``: the HNSW graphs that answer for large namespaces (None: always scan exactly)."""

    def __init__(self, graphs: VectorGraphs | None = None) -> None:
        self.graphs = graphs
        self.common_words = CommonWords(self._count)

    def add(self, session: Session, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        connection = session.connection()
        vectors = []
        for e in entries:
            assert e.vector is not None
            vectors.append({"seq": e.seq, "namespace_id": e.namespace_id, "vector": blob(e.vector)})
        connection.execute(ADD_VECTOR, vectors)
        connection.execute(ADD_WORDS, [{"seq": e.seq, "text": e.text} for e in entries])

    def remove(self, session: Session, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        connection = session.connection()
        connection.execute(DROP_VECTOR, [{"seq": e.seq} for e in entries])
        connection.execute(DROP_WORDS, [{"seq": e.seq, "text": e.text} for e in entries])

    def nearest(
        self, session: Session, namespace_id: str, vector: Vector, k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[tuple[int, float | None]]:
        if not where and self.graphs is not None:
            chosen = self.graphs.nearest(session, namespace_id, vector, k)
            if chosen is not None:
                return list[tuple[int, float | None]](chosen)
        if not where:
            params = {"vector": blob(vector), "k": k, "namespace_id": namespace_id}
            return [(int(seq), 1.0 - float(d)) for seq, d in session.execute(KNN, params)]
        # A filter: an exact scan of the rows it keeps, each vector found by its rowid.
        distance = func.vec_distance_cosine(VECTORS.c.embedding, blob(vector)).label("distance")
        query = (
            select(Memory.seq, distance)
            .join(VECTORS, VECTORS.c.rowid == Memory.seq)
            .where(Memory.namespace_id == namespace_id, *where)
            .order_by(distance)
            .limit(k)
        )
        return [(int(seq), 1.0 - float(d)) for seq, d in session.execute(query)]

    def matching(
        self, session: Session, namespace_id: str, words: list[str], k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[int]:
        words = [word for word in words if not self.common_words.common(session, namespace_id, word)]
        if not words:
            return []
        match = " OR ".join(f'"{word}"' for word in words)
        query = (
            select(Memory.seq)
            .join(WORDS, WORDS.c.rowid == Memory.seq)
            .where(text("memory_words MATCH :match"), Memory.namespace_id == namespace_id, *where)
            .order_by(literal_column("bm25(memory_words)"))
            .limit(k)
        )
        return [int(seq) for seq in session.scalars(query, {"match": match})]

    @staticmethod
    def _count(session: Session, namespace_id: str, word: str) -> int:
        params = {"match": f'"{word}"', "namespace_id": namespace_id, "cap": COMMON_WORD}
        return int(session.scalar(COUNT_CAPPED, params) or 0)

    def dropped(self, namespace_id: str) -> None:
        if self.graphs is not None:
            self.graphs.forget(namespace_id)

    def similarity(self, session: Session, seqs: Sequence[int], vector: Vector) -> dict[int, float]:
        # A graph holds the vectors of a large namespace in memory; vec0 reads a chunk for each.
        found = self.graphs.similarity(seqs, vector) if self.graphs is not None else {}
        # One lookup by rowid each: vec0 finds a rowid directly, but would scan for an IN list.
        query = blob(vector)
        for seq in (seq for seq in seqs if seq not in found):
            distance = session.scalar(DISTANCE, {"seq": seq, "vector": query})
            if distance is not None:
                found[seq] = 1.0 - float(distance)
        return found
