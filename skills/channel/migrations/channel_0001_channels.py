"""channels: channels, their messages and dedupe keys (the channel skill's own branch)

Revision ID: channel_0001
Revises:
Depends on: 0005
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "channel_0001"
down_revision = None
branch_labels = ("channel",)
depends_on = "0005"

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("max_deliveries", sa.Integer(), nullable=False),
        sa.Column("retention_s", sa.Integer(), nullable=False),
        sa.Column("stored_count", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("billed_mib", sa.Integer(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_channels_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_channels_state", ["state"], unique=False)
        batch_op.create_index(
            "ux_channels_tenant_name_live",
            ["tenant_id", "name"],
            unique=True,
            sqlite_where=sa.text("state != 'deleted'"),
            postgresql_where=sa.text("state != 'deleted'"),
        )

    op.create_table(
        "channel_messages",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sender_agent", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("receipt", sa.String(length=64), nullable=True),
        sa.Column("visible_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("dead_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("receipt"),
    )
    with op.batch_alter_table("channel_messages", schema=None) as batch_op:
        batch_op.create_index("ix_channel_messages_queue", ["channel_id", "state", "seq"], unique=False)
        batch_op.create_index("ix_channel_messages_leases", ["state", "visible_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_channel_messages_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "channel_dedupe",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"]),
        sa.PrimaryKeyConstraint("channel_id", "dedupe_key"),
    )
    with op.batch_alter_table("channel_dedupe", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_channel_dedupe_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("channel_dedupe")
    op.drop_table("channel_messages")
    op.drop_table("channels")
