"""The database skill's rows in the store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class Database(Base):
    """A database instance. Like a sandbox's, the record is written before any
    container, volume or file exists, and marked deleted only after they are
    gone: whatever carries this store's label without a live record is a stray."""

    __tablename__ = "databases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(16))  # sqlite | postgres
    size: Mapped[str] = mapped_column(String(16))
    storage_mib: Mapped[int] = mapped_column(Integer)
    # creating | running | deleting | deleted | failed
    state: Mapped[str] = mapped_column(String(16), default="creating")
    # Where it lives: a file for sqlite; a container, volume and port for postgres.
    path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    volume: Mapped[str | None] = mapped_column(String(128), nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The tenant's own credentials for the server (postgres); handed to the tenant.
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # While deleting: the server (worker id) removing it. The reaper leaves the
    # delete to that server while it lives; NULL once a try failed (anyone retries).
    deleting_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_databases_state", "state"), Index("ix_databases_tenant_name", "tenant_id", "name"))


class DatabaseSnapshot(Base):
    """A backup of a database, kept as a file in the data dir until its database is deleted."""

    __tablename__ = "database_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    db_id: Mapped[str] = mapped_column(ForeignKey("databases.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
