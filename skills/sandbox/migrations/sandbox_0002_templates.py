"""sandbox templates: tenants' custom templates, each naming an image shared by its recipe's hash

Revision ID: sandbox_0002
Revises: sandbox_0001
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "sandbox_0002"
down_revision = "sandbox_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_templates",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("base", sa.String(length=64), nullable=False),
        sa.Column("debian_packages", sa.JSON(), nullable=False),
        sa.Column("pypi_packages", sa.JSON(), nullable=False),
        sa.Column("image", sa.String(length=256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("build_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_sandbox_templates_tenant_name"),
    )
    op.create_index("ix_sandbox_templates_tenant_id", "sandbox_templates", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sandbox_templates_tenant_id", table_name="sandbox_templates")
    op.drop_table("sandbox_templates")
