"""The memory skill: durable memories in namespaces, searched by meaning and by words."""

from __future__ import annotations

import sqlite_vec

from skills.base import Op, Platform
from skills.embeddings import shared_embedder
from skills.memory import models as m
from skills.memory import ops
from skills.memory.engines.base import MemoryIndex
from skills.memory.engines.graph import VectorGraphs
from skills.memory.engines.postgres import PostgresIndex
from skills.memory.engines.sqlite import SqliteIndex, vectors_past
from skills.memory.limits import MEMORIES, NAMESPACES
from skills.memory.memories import MemoryManager
from skills.registry import skill_from_doc


def from_platform(platform: Platform) -> MemoryManager:
    """The index of the store's kind, and the process's one embedder."""
    store = platform.store
    if store.engine.dialect.name == "postgresql":
        index: MemoryIndex = PostgresIndex()
    else:
        index = SqliteIndex(VectorGraphs(platform.home / "memory-graphs", vectors_past, store.transaction))
    return MemoryManager(platform.store, platform.leases, index, shared_embedder(platform.services))


SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "put",
            "Remember one text in a namespace (default: your agent's own; 'shared' for every agent of your tenant); "
            "a put with the same key replaces. Returns memory_id.",
            m.PutInput,
            m.PutOutput,
            ops.put,
            worst_case=ops.put_worst_case,
            ask_less="a shorter text",
        ),
        Op(
            "put_batch",
            "Remember up to 100 texts in one namespace, all or none.",
            m.PutBatchInput,
            m.PutBatchOutput,
            ops.put_batch,
            timeout_s=lambda a: 120.0,
            worst_case=ops.put_batch_worst_case,
            ask_less="fewer or shorter items",
        ),
        Op(
            "search",
            "Find memories by meaning and by words in one namespace: the best top_k, each with its score.",
            m.SearchInput,
            m.SearchOutput,
            ops.search,
            read_only=True,
            idempotent=True,
            worst_case=ops.search_worst_case,
        ),
        Op(
            "get",
            "One memory, by memory_id or by key.",
            m.GetInput,
            m.MemoryOut,
            ops.get,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "list",
            "A namespace's memories, oldest first, a page at a time (pass next_cursor back as cursor).",
            m.ListInput,
            m.ListOutput,
            ops.list_,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "namespaces",
            "Your tenant's memory namespaces, with how many memories and bytes each holds.",
            m.NamespacesInput,
            m.NamespacesOutput,
            ops.namespaces,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "delete",
            "Delete one memory (memory_id), or a whole namespace and all its memories (namespace; asks to confirm).",
            m.DeleteInput,
            m.DeleteOutput,
            ops.delete,
            destructive=True,
            releases=True,
            idempotent=True,
            confirm=lambda a: a.memory_id is None,
        ),
    ),
    resource=from_platform,
    quota=(NAMESPACES, MEMORIES),
    store_extensions=(sqlite_vec.loadable_path(),),
)
