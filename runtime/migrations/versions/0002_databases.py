"""databases: instances, their snapshots, and a quota of live databases per tenant

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 08:01:12.364463
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "databases",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("size", sa.String(length=16), nullable=False),
        sa.Column("storage_mib", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=True),
        sa.Column("container_id", sa.String(length=128), nullable=True),
        sa.Column("volume", sa.String(length=128), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(length=64), nullable=True),
        sa.Column("password", sa.String(length=128), nullable=True),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("billed_until", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.create_index("ix_databases_state", ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_databases_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_databases_tenant_name", ["tenant_id", "name"], unique=False)

    op.create_table(
        "database_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("db_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["db_id"],
            ["databases.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("database_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_database_snapshots_db_id"), ["db_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_database_snapshots_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_live_databases", sa.Integer(), nullable=False, server_default="8"))


def downgrade() -> None:

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("max_live_databases")

    with op.batch_alter_table("database_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_database_snapshots_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_database_snapshots_db_id"))

    op.drop_table("database_snapshots")
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_index("ix_databases_tenant_name")
        batch_op.drop_index(batch_op.f("ix_databases_tenant_id"))
        batch_op.drop_index("ix_databases_state")

    op.drop_table("databases")
