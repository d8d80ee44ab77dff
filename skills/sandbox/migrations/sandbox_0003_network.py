"""sandbox network: the ports a session sandbox exposes, and its egress allow-list

Revision ID: sandbox_0003
Revises: sandbox_0002
Create Date: 2026-12-01 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "sandbox_0003"
down_revision = "sandbox_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_exposures",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("sandbox_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sandbox_id"], ["sandboxes.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sandbox_id", "port", name="uq_sandbox_exposures_sandbox_port"),
    )
    op.create_index("ix_sandbox_exposures_sandbox_id", "sandbox_exposures", ["sandbox_id"], unique=False)
    op.create_table(
        "sandbox_networks",
        sa.Column("sandbox_id", sa.String(length=64), nullable=False),
        sa.Column("allow", sa.JSON(), nullable=False),
        sa.Column("socket_dir", sa.String(length=256), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sandbox_id"], ["sandboxes.id"]),
        sa.PrimaryKeyConstraint("sandbox_id"),
    )


def downgrade() -> None:
    op.drop_table("sandbox_networks")
    op.drop_index("ix_sandbox_exposures_sandbox_id", table_name="sandbox_exposures")
    op.drop_table("sandbox_exposures")
