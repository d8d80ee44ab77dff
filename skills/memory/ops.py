"""The memory skill's handlers."""

from __future__ import annotations

from typing import Literal

from common.errors import InvalidInput
from scheduler.pricing import Usage
from scheduler.tasks import TaskContext
from skills.embeddings import DEFAULT_EMBEDDER
from skills.memory import models as m
from skills.memory.memories import MemoryManager, Stored
from skills.memory.rows import Memory
from skills.memory.search import Found


def manager(ctx: TaskContext) -> MemoryManager:
    return ctx.service(MemoryManager)


def namespace(ctx: TaskContext, name: str | None) -> str:
    return MemoryManager.namespace_for(name, ctx.agent)


def bill_tokens(ctx: TaskContext, tokens: int) -> None:
    ctx.add_usage(Usage.tokens(DEFAULT_EMBEDDER, input=tokens))


def put_output(stored: Stored) -> m.PutOutput:
    row = stored.memory
    return m.PutOutput(
        memory_id=row.id, namespace=stored.namespace, key=row.key, replaced=stored.replaced, expires_at=row.expires_at
    )


def memory_out(row: Memory, name: str) -> m.MemoryOut:
    return m.MemoryOut(
        memory_id=row.id,
        namespace=name,
        key=row.key,
        text=row.text,
        metadata=dict(row.meta),
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
    )


def hit(found: Found) -> m.Hit:
    out = memory_out(found.memory, found.namespace)
    matched: list[Literal["meaning", "words"]] = []
    if found.ranked.by_meaning:
        matched.append("meaning")
    if found.ranked.by_words:
        matched.append("words")
    return m.Hit(**out.model_dump(), score=found.score, matched=matched)


async def put(ctx: TaskContext, args: m.PutInput) -> m.PutOutput:
    item = m.MemoryIn(text=args.text, key=args.key, metadata=args.metadata, ttl_s=args.ttl_s)
    stored, tokens = await manager(ctx).put(ctx.tenant_id, namespace(ctx, args.namespace), [item])
    bill_tokens(ctx, tokens)
    return put_output(stored[0])


async def put_batch(ctx: TaskContext, args: m.PutBatchInput) -> m.PutBatchOutput:
    name = namespace(ctx, args.namespace)
    stored, tokens = await manager(ctx).put(ctx.tenant_id, name, args.items)
    bill_tokens(ctx, tokens)
    return m.PutBatchOutput(namespace=name, memories=[put_output(s) for s in stored], tokens=tokens)


async def search(ctx: TaskContext, args: m.SearchInput) -> m.SearchOutput:
    name = namespace(ctx, args.namespace)
    found, tokens = await manager(ctx).search(ctx.tenant_id, name, args.query, args.top_k, args.filter, args.min_score)
    bill_tokens(ctx, tokens)
    return m.SearchOutput(namespace=name, hits=[hit(f) for f in found])


async def get(ctx: TaskContext, args: m.GetInput) -> m.MemoryOut:
    if args.memory_id is not None:
        row, name = manager(ctx).get(ctx.tenant_id, args.memory_id)
    else:
        assert args.key is not None
        row, name = manager(ctx).get_by_key(ctx.tenant_id, namespace(ctx, args.namespace), args.key)
    return memory_out(row, name)


async def list_(ctx: TaskContext, args: m.ListInput) -> m.ListOutput:
    name = namespace(ctx, args.namespace)
    after = 0
    if args.cursor is not None:
        if not args.cursor.isdigit():
            raise InvalidInput("cursor is not one memory_list gave: pass next_cursor as it came, or leave it out.")
        after = int(args.cursor)
    rows, last = manager(ctx).page(ctx.tenant_id, name, after, args.limit)
    return m.ListOutput(
        namespace=name,
        memories=[memory_out(row, name) for row in rows],
        next_cursor=None if last is None else str(last),
    )


async def namespaces(ctx: TaskContext, args: m.NamespacesInput) -> m.NamespacesOutput:
    rows = manager(ctx).namespaces(ctx.tenant_id)
    return m.NamespacesOutput(
        namespaces=[
            m.NamespaceInfo(
                namespace=row.name,
                memories=row.memories,
                stored_bytes=row.stored_bytes,
                state="stopped" if row.state == "stopped" else "live",
                created_at=row.created_at,
            )
            for row in rows
        ]
    )


async def delete(ctx: TaskContext, args: m.DeleteInput) -> m.DeleteOutput:
    if args.memory_id is not None:
        return m.DeleteOutput(deleted=manager(ctx).delete(ctx.tenant_id, args.memory_id), namespace=None)
    assert args.namespace is not None
    deleted = manager(ctx).delete_namespace(ctx.tenant_id, args.namespace)
    return m.DeleteOutput(deleted=deleted, namespace=args.namespace)


def put_worst_case(args: m.PutInput) -> Usage:
    return Usage.tokens(DEFAULT_EMBEDDER, input=len(args.text.encode()) + 2)


def put_batch_worst_case(args: m.PutBatchInput) -> Usage:
    return Usage.tokens(DEFAULT_EMBEDDER, input=sum(len(item.text.encode()) + 2 for item in args.items))


def search_worst_case(args: m.SearchInput) -> Usage:
    return Usage.tokens(DEFAULT_EMBEDDER, input=len(args.query.encode()) + 2)
