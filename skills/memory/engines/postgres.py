"""Memories' indexes in a PostgreSQL store: pgvector and tsvector, shared by every replica.

Vectors are a ``vector(384)`` column with an HNSW index (cosine); a search asks
for more candidates than it keeps (``ef_search``) and lets pgvector's iterative
scan go on past rows of other namespaces, so a namespace's nearest memories come
back even in a table shared by every tenant (pgvector 0.8 and later; before it, a
namespace's hits come from the ``ef_search`` nearest of the whole table). Words are a generated tsvector
column (English stemming) with a GIN index, ranked by ``ts_rank_cd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnClause, ColumnElement, column, select, text
from sqlalchemy.orm import Session

from skills.memory.engines.base import COMMON_WORD, CommonWords, Entry, Vector
from skills.memory.rows import Memory

SET_VECTOR = text("UPDATE memories SET embedding = CAST(:vector AS vector) WHERE seq = :seq")
COUNT_CAPPED = text(
    "SELECT count(*) FROM (SELECT 1 FROM memories WHERE namespace_id = :namespace_id "
    "AND words @@ plainto_tsquery('english', :word) LIMIT :cap) AS found"
)
# Candidates the HNSW search keeps while it walks the graph: recall against speed.
EF_SEARCH = 100
EMBEDDING: ColumnClause[Any] = column("embedding")
WORDS: ColumnClause[Any] = column("words")


def literal(vector: Vector) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


class PostgresIndex:
    def add(self, session: Session, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        rows = []
        for e in entries:
            assert e.vector is not None
            rows.append({"seq": e.seq, "vector": literal(e.vector)})
        session.connection().execute(SET_VECTOR, rows)

    def remove(self, session: Session, entries: Sequence[Entry]) -> None:
        """Nothing to do: the vector and the words go with the row."""

    def __init__(self) -> None:
        self._iterative: bool | None = None
        self.common_words = CommonWords(self._count)

    def iterative(self, session: Session) -> bool:
        """Whether this pgvector can scan on past rows a filter drops (0.8 and later)."""
        if self._iterative is None:
            setting = session.scalar(text("SELECT current_setting('hnsw.iterative_scan', true)"))
            self._iterative = setting is not None
        return self._iterative

    def nearest(
        self, session: Session, namespace_id: str, vector: Vector, k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[tuple[int, float | None]]:
        session.execute(text(f"SET LOCAL hnsw.ef_search = {min(max(EF_SEARCH, k), 1000)}"))
        if self.iterative(session):
            session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        distance = EMBEDDING.op("<=>")(text("CAST(:vector AS vector)")).label("distance")
        query = (
            select(Memory.seq, distance).where(Memory.namespace_id == namespace_id, *where).order_by(distance).limit(k)
        )
        found = [(int(seq), 1.0 - float(d)) for seq, d in session.execute(query, {"vector": literal(vector)})]
        found.sort(key=lambda hit: -hit[1])  # relaxed order: nearly sorted
        return list[tuple[int, float | None]](found)

    def matching(
        self, session: Session, namespace_id: str, words: list[str], k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[int]:
        words = [word for word in words if not self.common_words.common(session, namespace_id, word)]
        if not words:
            return []
        tsquery = text("websearch_to_tsquery('english', :match)")
        query = (
            select(Memory.seq)
            .where(WORDS.op("@@")(tsquery), Memory.namespace_id == namespace_id, *where)
            .order_by(text("ts_rank_cd(words, websearch_to_tsquery('english', :match)) DESC"))
            .limit(k)
        )
        return [int(seq) for seq in session.scalars(query, {"match": " or ".join(words)})]

    @staticmethod
    def _count(session: Session, namespace_id: str, word: str) -> int:
        params = {"word": word, "namespace_id": namespace_id, "cap": COMMON_WORD}
        return int(session.scalar(COUNT_CAPPED, params) or 0)

    def similarity(self, session: Session, seqs: Sequence[int], vector: Vector) -> dict[int, float]:
        if not seqs:
            return {}
        distance = EMBEDDING.op("<=>")(text("CAST(:vector AS vector)"))
        query = select(Memory.seq, distance).where(Memory.seq.in_(list(seqs)))
        return {int(seq): 1.0 - float(d) for seq, d in session.execute(query, {"vector": literal(vector)})}

    def dropped(self, namespace_id: str) -> None:
        """Nothing of a namespace lives outside PostgreSQL."""
