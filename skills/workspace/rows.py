"""The workspace skill's rows in the store: workspaces and their snapshots.

The bytes are not here: each workspace is an ext4 image on the host of the
server that made it (``skills.workspace.disks``); a row says where and how big.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class Workspace(Base):
    """A tenant's workspace: a filesystem of ``size_mib``, the cap its writers hit."""

    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    size_mib: Mapped[int] = mapped_column(Integer)
    # creating | live | stopped (the budget ran out: billing ended, data kept, writes and
    # mounts refused until a lease is covered again) | deleted | failed
    state: Mapped[str] = mapped_column(String(16), default="creating")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # One live workspace per name and tenant.
        Index(
            "ux_workspaces_tenant_name_live",
            "tenant_id",
            "name",
            unique=True,
            sqlite_where=text("state IN ('creating', 'live', 'stopped')"),
            postgresql_where=text("state IN ('creating', 'live', 'stopped')"),
        ),
        Index("ix_workspaces_state", "state"),
    )


class WorkspaceSnapshot(Base):
    """A copy of a workspace's image, taken frozen; it counts (and is billed) at the
    workspace's ``size_mib`` until it or its workspace is deleted."""

    __tablename__ = "workspace_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    size_mib: Mapped[int] = mapped_column(Integer)
    # The host's bytes the copy takes (a sparse file: only what was written).
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
