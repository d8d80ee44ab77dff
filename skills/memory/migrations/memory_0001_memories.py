"""memories: namespaces, memories, and their vector and full-text indexes

On SQLite the vectors go into a sqlite-vec ``vec0`` table (partitioned by
namespace, cosine distance) and the words into an FTS5 table over the memories'
text; on PostgreSQL into a pgvector column with an HNSW index and a generated
tsvector column with a GIN index (PostgreSQL needs the pgvector extension).

Revision ID: memory_0001
Revises:
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "memory_0001"
down_revision = None
branch_labels = ("memory",)
depends_on = "0005"

DIMENSIONS = 384  # skills.embeddings.DIMENSIONS when this was written


def upgrade() -> None:
    op.create_table(
        "memory_namespaces",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("memories", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("billed_mib", sa.Integer(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_memory_namespaces_tenant_id", "memory_namespaces", ["tenant_id"])
    op.create_index("ix_memory_namespaces_tenant_name", "memory_namespaces", ["tenant_id", "name"])
    op.create_index("ix_memory_namespaces_state", "memory_namespaces", ["state"])
    op.create_table(
        "memories",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("namespace_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.ForeignKeyConstraint(["namespace_id"], ["memory_namespaces.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("namespace_id", "key", name="uq_memories_namespace_key"),
    )
    op.create_index("ix_memories_tenant_id", "memories", ["tenant_id"])
    op.create_index("ix_memories_namespace_seq", "memories", ["namespace_id", "seq"])
    op.create_index("ix_memories_expires_at", "memories", ["expires_at"])
    if op.get_bind().dialect.name == "postgresql":
        postgres_indexes()
    else:
        sqlite_indexes()


def sqlite_indexes() -> None:
    op.execute(
        "CREATE VIRTUAL TABLE memory_vectors USING vec0("
        f"namespace_id text partition key, embedding float[{DIMENSIONS}] distance_metric=cosine)"
    )
    op.execute(
        "CREATE VIRTUAL TABLE memory_words USING fts5("
        "text, content='memories', content_rowid='seq', tokenize='porter unicode61')"
    )


def postgres_indexes() -> None:
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first():
        raise RuntimeError(
            "the memory skill needs the pgvector extension on this PostgreSQL server: install it "
            "(Debian: postgresql-<version>-pgvector), then start cloudskills again."
        )
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(f"ALTER TABLE memories ADD COLUMN embedding vector({DIMENSIONS})")
    op.execute("CREATE INDEX ix_memories_embedding ON memories USING hnsw (embedding vector_cosine_ops)")
    op.execute(
        "ALTER TABLE memories ADD COLUMN words tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
    )
    op.execute("CREATE INDEX ix_memories_words ON memories USING gin (words)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TABLE memory_words")
        op.execute("DROP TABLE memory_vectors")
    op.drop_table("memories")
    op.drop_table("memory_namespaces")
