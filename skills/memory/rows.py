"""The memory skill's rows in the store: namespaces (what is billed on a lease) and memories.

A memory's vector and its words live in the store too, beside its row, in the
engine's own index (see ``skills.memory.engines``): on SQLite a sqlite-vec table
and an FTS5 table keyed by the memory's ``seq``; on PostgreSQL a pgvector column
with an HNSW index and a tsvector column with a GIN index.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class MemoryNamespace(Base):
    """A tenant's named set of memories: an agent's own (named after it) or ``shared``.

    live -> stopped (its lease could not be renewed: writes refused, reads allowed)
         -> deleting -> deleted"""

    __tablename__ = "memory_namespaces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="live")
    memories: Mapped[int] = mapped_column(Integer, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The MiB its lease is billed for now (every MiB begun counts; 0: no lease open).
    billed_mib: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_memory_namespaces_tenant_name", "tenant_id", "name"),
        Index("ix_memory_namespaces_state", "state"),
    )


class Memory(Base):
    """One memory: a text, its metadata, and (in the engine's index) its vector and words.
    ``seq`` keys the index entries; ``id`` is what agents see."""

    __tablename__ = "memories"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("memory_namespaces.id"))
    key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The embedding model its vector was made with.
    model: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        UniqueConstraint("namespace_id", "key", name="uq_memories_namespace_key"),
        Index("ix_memories_namespace_seq", "namespace_id", "seq"),
        Index("ix_memories_expires_at", "expires_at"),
    )
