"""sandbox disks: each sandbox's disk size, billed by the GiB-hour (the sandbox skill's own branch)

Sandboxes recorded before had their /work in memory: their disk is 0 MiB, and
their leases keep billing what they billed.

Revision ID: sandbox_0001
Revises:
Depends on: 0001
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sandbox_0001"
down_revision = None
branch_labels = ("sandbox",)
depends_on = "0001"


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_mib", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("disk_mib")
