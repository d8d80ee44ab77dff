"""Search quality on a small labelled set (tests/skills/memory_facts.py): the shipped
embedder with hybrid search finds the right fact in its top 5 for at least 90% of
paraphrased questions; keyword-only search, the baseline, is measured in the same run."""

from __future__ import annotations

import pytest

from runtime.app import App
from skills.memory.engines.base import query_words
from skills.memory.memories import MemoryManager
from skills.memory.rows import Memory, MemoryNamespace
from tests.mcp_helpers import call, mcp_client
from tests.skills.memory_facts import FACTS, QUERIES

pytestmark = [pytest.mark.anyio, pytest.mark.model]
TOP = 5


def keyword_top(app: App, query: str) -> list[str]:
    """The baseline: the full-text index alone, as the hybrid search queries it."""
    manager = app.service(MemoryManager)
    with app.store.transaction() as session:
        namespace = session.query(MemoryNamespace).filter_by(name="shared").one()
        seqs = manager.index.matching(session, namespace.id, query_words(query), TOP, [])
        keys = {row.seq: row.key for row in session.query(Memory).filter(Memory.seq.in_(seqs))}
    return [str(keys[seq]) for seq in seqs]


async def test_hybrid_recall_at_5_beats_keywords_alone(memory_app: App) -> None:
    assert len(FACTS) >= 60 and len(QUERIES) >= 40
    items = [{"key": key, "text": text} for key, text in FACTS.items()]
    async with mcp_client(memory_app, agent="planner") as client:
        for start in range(0, len(items), 50):
            await call(client, "memory_put_batch", namespace="shared", items=items[start : start + 50])
        hybrid = 0
        for query, answer in QUERIES.items():
            hits = (await call(client, "memory_search", namespace="shared", query=query, top_k=TOP))["hits"]
            hybrid += answer in [hit["key"] for hit in hits]
    keywords = sum(answer in keyword_top(memory_app, query) for query, answer in QUERIES.items())
    recall, baseline = hybrid / len(QUERIES), keywords / len(QUERIES)
    print(f"recall@5: hybrid {recall:.3f}, keyword-only {baseline:.3f} ({len(QUERIES)} queries, {len(FACTS)} facts)")
    assert recall >= 0.9, f"hybrid recall@5 {recall:.3f} (keyword-only {baseline:.3f})"
    assert recall > baseline
