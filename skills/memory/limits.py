"""What a tenant may keep in memory: its quotas, and the size of one memory."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from scheduler.resources import LiveQuota
from skills.embeddings import DIMENSIONS, TextEmbedder
from skills.memory.models import MemoryIn
from skills.memory.rows import MemoryNamespace

LIVE = ("live", "stopped")
# Far more than one fact needs: a longer text is more than the model reads (MAX_TOKENS) anyway.
MAX_TEXT_BYTES = 4096


def count_namespaces(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(MemoryNamespace.tenant_id == tenant_id, MemoryNamespace.state.in_(LIVE))
    return int(session.scalar(query) or 0)


def count_memories(session: Session, tenant_id: str) -> int:
    query = select(func.coalesce(func.sum(MemoryNamespace.memories), 0)).where(
        MemoryNamespace.tenant_id == tenant_id, MemoryNamespace.state.in_(LIVE)
    )
    return int(session.scalar(query) or 0)


NAMESPACES = LiveQuota(
    "max_live_memory_namespaces",
    64,
    "memory namespaces",
    "delete one with memory_delete {namespace} (memory_namespaces lists them)",
    count_namespaces,
)
MEMORIES = LiveQuota(
    "max_live_memories",
    100_000,
    "memories",
    "delete some with memory_delete, or give new ones a ttl_s",
    count_memories,
)


def size_of(item: MemoryIn) -> int:
    """What a memory stores: its text, key and metadata, and its float32 vector."""
    meta = len(json.dumps(item.metadata)) if item.metadata else 0
    return len(item.text.encode()) + len((item.key or "").encode()) + meta + 4 * DIMENSIONS


async def check_items(embedder: TextEmbedder, items: Sequence[MemoryIn]) -> None:
    """Refuse, before anything is embedded, a batch with a memory too long or a key twice."""
    keys = [item.key for item in items if item.key is not None]
    if len(keys) != len(set(keys)):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise InvalidInput(f"the key {twice!r} is given twice in items: give each key once, then call again.")
    for n, item in enumerate(items):
        where = f"items[{n}]" if len(items) > 1 else "text"
        if len(item.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput(
                f"{where} is {len(item.text.encode())} bytes, over the {MAX_TEXT_BYTES} bytes a memory may "
                "have: split it into several memories, one fact each."
            )
    counted = await embedder.count_tokens([item.text for item in items])
    for n, tokens in enumerate(counted):
        if tokens > embedder.max_tokens:
            where = f"items[{n}]" if len(items) > 1 else "text"
            raise InvalidInput(
                f"{where} is {tokens} word pieces, over the {embedder.max_tokens} the embedding model reads: "
                "split it into several memories, one fact each."
            )
