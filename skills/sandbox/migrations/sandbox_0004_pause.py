"""sandbox pause: when a session sandbox was paused, and its checkpoint's size on disk

Revision ID: sandbox_0004
Revises: sandbox_0003
Create Date: 2026-12-01 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "sandbox_0004"
down_revision = "sandbox_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", scheduler.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_mib", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("checkpoint_mib")
        batch_op.drop_column("paused_at")
