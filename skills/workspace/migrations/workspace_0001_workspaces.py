"""workspaces: workspaces and their snapshots (the workspace skill's own branch)

Revision ID: workspace_0001
Revises:
Depends on: 0006
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "workspace_0001"
down_revision = None
branch_labels = ("workspace",)
depends_on = "0006"

LIVE = "state IN ('creating', 'live', 'stopped')"


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("size_mib", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workspaces_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_workspaces_state", ["state"], unique=False)
        batch_op.create_index(
            "ux_workspaces_tenant_name_live",
            ["tenant_id", "name"],
            unique=True,
            sqlite_where=sa.text(LIVE),
            postgresql_where=sa.text(LIVE),
        )

    op.create_table(
        "workspace_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("size_mib", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workspace_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workspace_snapshots_workspace_id"), ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_table("workspace_snapshots")
    op.drop_table("workspaces")
