"""places: where each server runs and each resource lives, so a call reaches its machine

A worker records its place (host and data dir); a lease records where its resource
was made. A task on a resource that lives on one machine, admitted by a server
elsewhere, is stored with that place and its whole arguments (``payload``), and a
server of that place claims and runs it; its whole result travels back the same way.
Rows from before have no place (NULL): anywhere, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("place", sa.String(length=512), nullable=True))
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("place", sa.String(length=512), nullable=True))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("place", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("payload", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("payload")
        batch_op.drop_column("place")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("place")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("place")
