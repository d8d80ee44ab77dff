"""The durable state: tenants, tasks, sandboxes and the billing ledger.

Plain SQLAlchemy 2 models with portable types only, so the same schema runs on
SQLite (the embedded default) and PostgreSQL. Alembic migrations under
``runtime/migrations`` create and evolve it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # None: no hard budget. Amounts are integer micro-units of the currency.
    budget_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Past this much spent, billing_balance raises its alert (a soft limit).
    alert_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Tasks admitted and not yet settled: kept with the money, in the same
    # transactions, so the concurrency quota needs no count of the tasks table.
    active_tasks: Mapped[int] = mapped_column(Integer, default=0)
    # Tasks started in the current minute (minutes since the epoch, UTC): the
    # tasks-per-minute quota is a fixed window, counted with the money too.
    window_minute: Mapped[int] = mapped_column(BigInteger, default=0)
    window_tasks: Mapped[int] = mapped_column(Integer, default=0)
    # Quotas; a task or resource past one is refused with when to retry.
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer, default=64)
    max_live_sandboxes: Mapped[int] = mapped_column(Integer, default=32)
    tasks_per_minute: Mapped[int] = mapped_column(Integer, default=1200)
    tokens_per_minute: Mapped[int] = mapped_column(Integer, default=200_000)
    max_live_databases: Mapped[int] = mapped_column(Integer, default=8)
    max_live_vms: Mapped[int] = mapped_column(Integer, default=4)


class ApiKey(Base):
    """A tenant's API key. Only the key's SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Task(Base):
    """One call of one op: queued -> running -> succeeded | failed | cancelled | timed_out."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    skill: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    idempotent: Mapped[bool] = mapped_column(default=False)
    timeout_s: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hold_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("ix_tasks_state", "state"),
        Index("ix_tasks_tenant_state", "tenant_id", "state"),
        Index("ix_tasks_tenant_created", "tenant_id", "created_at"),
    )


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
    state: Mapped[str] = mapped_column(String(16), default="starting")  # starting | running | destroyed
    vcpus: Mapped[float] = mapped_column(Float)
    memory_mib: Mapped[int] = mapped_column(Integer)
    ttl_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    destroy_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_sandboxes_state", "state"),)


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
    # Instance time and storage are billed in intervals up to here.
    billed_until: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

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


class Vm(Base):
    """A virtual machine: one QEMU process while running, an overlay disk while it exists.

    The record is written before its disk or process exists and marked deleted
    only after both are gone, so a QEMU process of this store with no live
    record is a stray the reaper kills."""

    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    flavor: Mapped[str] = mapped_column(String(32))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    # creating | starting | running | stopped | deleting | deleted | failed
    state: Mapped[str] = mapped_column(String(16), default="creating")
    accel: Mapped[str | None] = mapped_column(String(8), nullable=True)  # kvm | tcg
    ttl_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Billed in intervals up to here, at the rate of the state it was in.
    billed_until: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delete_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_vms_state", "state"),)


class VmSnapshot(Base):
    """A disk snapshot of a VM, kept inside its overlay until the VM is deleted."""

    __tablename__ = "vm_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LedgerEntry(Base):
    """One append-only line of money. Never updated, never deleted.

    ``idempotency_key`` is unique: writing the same charge twice is impossible,
    so settling a task again (after a crash, a retry) charges nothing more."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    skill: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(64))
    item: Mapped[str] = mapped_column(String(160))  # task_fee, or a meter: sandbox.vcpu_ms, tokens.output:<model>
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    catalog_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The UTC day (YYYY-MM-DD), stored so usage groups by day the same way on every backend.
    day: Mapped[str] = mapped_column(String(10), default=lambda: utcnow().strftime("%Y-%m-%d"))

    __table_args__ = (Index("ix_ledger_tenant_day", "tenant_id", "day"),)
