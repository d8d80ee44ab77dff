"""workers: the server processes sharing the store, their heartbeats, and who leads each duty

Each task records the worker (server process) that runs it; a worker whose
heartbeat lapses is dead, and another replica fails or retries its tasks. The
duties one replica at a time must do (reaping, lease renewals) are led by the
worker named in ``leaders`` until its lease there ends. Tasks from before have
no worker (NULL): a server starting treats them as a dead process's.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "leaders",
        sa.Column("duty", sa.String(length=64), nullable=False),
        sa.Column("worker_id", sa.String(length=64), nullable=False),
        sa.Column("until", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("duty"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("worker_id")
    op.drop_table("leaders")
    op.drop_table("workers")
