"""The sandbox skill's rows in the store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class Sandbox(Base):
    """A sandbox's record. The record is written before its container exists and
    removed from the live set only after the container is gone, so a container
    without a live record is always a stray a reaper may remove."""

    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # Set for a one-task sandbox (sandbox_run); None for a session sandbox.
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    template: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(256))
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # starting | running | paused | resuming | destroyed | failed
    state: Mapped[str] = mapped_column(String(16), default="starting")
    vcpus: Mapped[float] = mapped_column(Float)
    memory_mib: Mapped[int] = mapped_column(Integer)
    # Its disk (/work and /tmp), billed by the GiB-hour like its memory.
    disk_mib: Mapped[int] = mapped_column(Integer, default=0)
    ttl_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    destroy_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # While paused (sandbox_pause): since when, and its checkpoint's size on disk, billed with its disk.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    checkpoint_mib: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_sandboxes_state", "state"),)
