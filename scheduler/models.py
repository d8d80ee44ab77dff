"""The durable state of tasks and money: tenants, keys, tasks, leases and the ledger.

Each resource kind keeps its own rows in its skill (``skills/<kind>/rows.py``),
on the same ``Base``.

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
    tasks_per_minute: Mapped[int] = mapped_column(Integer, default=1200)
    tokens_per_minute: Mapped[int] = mapped_column(Integer, default=200_000)
    # Each resource kind's live-count quota set for this tenant (``max_live_<kind>s``
    # -> count); a kind not named here has its own default (see scheduler.resources).
    quotas: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)


class ApiKey(Base):
    """A tenant's API key. Only the key's SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The agent this key speaks for inside its tenant (None: unnamed).
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Task(Base):
    """One call of one op: queued -> running -> succeeded | failed | cancelled | timed_out."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The agent of the tenant that made the call (None: unnamed).
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    skill: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(64))
    # The call's arguments as details (see scheduler.task_details): never file contents
    # or secrets; ``args_whole`` when nothing had to be cut, so the task can run again.
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    args_whole: Mapped[bool] = mapped_column(default=True)
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
    # The server process running it (``scheduler.workers``): when that process dies,
    # whichever replica sees its heartbeat lapse fails or retries its tasks.
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A task for a resource that lives on another machine (``scheduler.routing``): the place
    # (host and data dir) whose servers run it, and its whole arguments on the way there,
    # then its whole result on the way back; emptied once the caller has it.
    place: Mapped[str | None] = mapped_column(String(512), nullable=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_tasks_state", "state"),
        Index("ix_tasks_tenant_state", "tenant_id", "state"),
        Index("ix_tasks_tenant_created", "tenant_id", "created_at"),
    )


class Worker(Base):
    """A server process sharing the store (a replica): alive while its heartbeat is fresh."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Its host and data dir: what it can reach that a server elsewhere cannot.
    place: Mapped[str | None] = mapped_column(String(512), nullable=True)


class Leader(Base):
    """Which worker does a duty that one replica at a time must do, and until when."""

    __tablename__ = "leaders"

    duty: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime] = mapped_column(UTCDateTime())


class Lease(Base):
    """How a long-lived resource pays for its life (see ``scheduler.leases``): what it
    holds ahead, the rate it is billed at, and how far it has been billed."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the resource's own id
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The agent whose call made the resource: its bills are that agent's.
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))  # the skill: the ledger entries' `skill`
    op: Mapped[str] = mapped_column(String(64))  # the ledger entries' `op` (e.g. the state billed)
    # What one second of the resource uses: meter -> integer quantity.
    rate: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    billed_until: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Where the resource was made (a worker's place): a call on a resource that lives on one
    # machine (a file, a process) runs on a server there (``scheduler.routing``).
    place: Mapped[str | None] = mapped_column(String(512), nullable=True)

    __table_args__ = (Index("ix_leases_open", "ended_at", "lease_until"),)


class LedgerEntry(Base):
    """One append-only line of money. Never updated, never deleted.

    ``idempotency_key`` is unique: writing the same charge twice is impossible,
    so settling a task again (after a crash, a retry) charges nothing more."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    skill: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(64))
    item: Mapped[str] = mapped_column(String(160))  # task_fee, or a meter: <kind>.vcpu_ms, tokens.output:<model>
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    catalog_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The UTC day (YYYY-MM-DD), stored so usage groups by day the same way on every backend.
    day: Mapped[str] = mapped_column(String(10), default=lambda: utcnow().strftime("%Y-%m-%d"))

    __table_args__ = (
        Index("ix_ledger_tenant_day", "tenant_id", "day"),
        Index("ix_ledger_tenant_agent", "tenant_id", "agent"),
    )
