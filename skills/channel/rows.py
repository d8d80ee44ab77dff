"""The channel skill's rows in the store: channels, their messages, and the dedupe keys
that make a resend a no-op."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow

# A rowid on SQLite, a bigint identity on PostgreSQL: the order messages were sent in.
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class Channel(Base):
    """A tenant's channel, named; its counters move in the same transaction as its messages,
    so the storage its lease bills is always what it holds."""

    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    # live | stopped (the budget ran out: billing ended, sends refused) | deleted
    state: Mapped[str] = mapped_column(String(16), default="live")
    max_deliveries: Mapped[int] = mapped_column(Integer)
    retention_s: Mapped[int] = mapped_column(Integer)
    # Every message it holds, dead letters and messages in flight included.
    stored_count: Mapped[int] = mapped_column(Integer, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The MiB its open lease bills; 0 while it has no lease (empty, stopped or deleted).
    billed_mib: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # One live channel per name and tenant: two first sends racing make one channel.
        Index(
            "ux_channels_tenant_name_live",
            "tenant_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'deleted'"),
            postgresql_where=text("state != 'deleted'"),
        ),
        Index("ix_channels_state", "state"),
    )


class ChannelMessage(Base):
    """A message waiting, in flight (``receipt`` set and ``visible_at`` ahead) or dead.

    ``visible_at`` is when it may be delivered next: its send, then the end of each
    lease. It is deleted when acked, when its channel is, or past its ``expires_at``."""

    __tablename__ = "channel_messages"

    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # compact JSON, as sent
    size_bytes: Mapped[int] = mapped_column(Integer)
    sender_agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # ready | dead
    state: Mapped[str] = mapped_column(String(8), default="ready")
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    receipt: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    visible_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_channel_messages_queue", "channel_id", "state", "seq"),
        Index("ix_channel_messages_leases", "state", "visible_at"),
    )


class ChannelDedupe(Base):
    """A ``dedupe_key`` seen on a channel, until its window ends: a send with it again
    answers the first message's id and stores nothing."""

    __tablename__ = "channel_dedupe"

    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
