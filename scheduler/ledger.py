"""Admission holds and settlement: the only code that moves money.

At admission a task's worst case is held on its tenant (and refused if the
budget cannot cover it). At settlement the task's charges are appended to the
ledger and the hold released, in the same transaction as the task's final
state. Every entry has a unique idempotency key, so no charge is ever written
twice, whatever crashes or retries happen.

These run on every task, so they are plain SQL statements built once and run
on the session's connection, not through the ORM: the ORM's unit of work and
its bulk-statement machinery were most of a task's overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from common.errors import BudgetExceeded, NotFound
from scheduler.models import LedgerEntry, Tenant, utcnow
from scheduler.pricing import Charge, PriceCatalog, Usage

# The tenant's row, locked for this transaction where the backend can lock rows
# (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers).
_MONEY = (Tenant.id, Tenant.budget_micros, Tenant.spent_micros, Tenant.held_micros)
LOCK_TENANT = select(*_MONEY, Tenant.quotas).where(Tenant.id == bindparam("tenant_id")).with_for_update()
# A lease's hold (see scheduler.leases): like admission's, without counting a task in.
HOLD = (
    update(Tenant)
    .where(Tenant.id == bindparam("tenant_id"))
    .values(held_micros=Tenant.held_micros + bindparam("hold"))
    .returning(*_MONEY)
)
# Admission in one statement: count the task in and hold its worst case, and
# return the tenant as it now stands. A check that then fails raises, and the
# transaction's rollback takes the admission back.
ADMIT = (
    update(Tenant)
    .where(Tenant.id == bindparam("tenant_id"))
    .values(
        held_micros=Tenant.held_micros + bindparam("hold"),
        active_tasks=Tenant.active_tasks + 1,
        window_tasks=case((Tenant.window_minute == bindparam("minute"), Tenant.window_tasks + 1), else_=1),
        window_minute=bindparam("minute"),
    )
    .returning(
        *_MONEY,
        Tenant.active_tasks,
        Tenant.window_tasks,
        Tenant.max_concurrent_tasks,
        Tenant.tasks_per_minute,
        Tenant.tokens_per_minute,
    )
)
_released = Tenant.held_micros - bindparam("release")
SETTLE = (
    update(Tenant)
    .where(Tenant.id == bindparam("tenant_id"))
    .values(
        spent_micros=Tenant.spent_micros + bindparam("total"),
        held_micros=case((_released < 0, 0), else_=_released),
        active_tasks=Tenant.active_tasks - bindparam("ended"),
    )
)
APPEND = insert(LedgerEntry)
# The agent the running task acts for (set by the scheduler around each handler), so what a
# handler opens deep inside a kind's manager (a lease) is charged to that agent.
acting_agent: ContextVar[str | None] = ContextVar("cloudskills_acting_agent", default=None)
ALREADY_POSTED = select(func.count()).where(LedgerEntry.idempotency_key.in_(bindparam("keys", expanding=True)))


def no_tenant(tenant_id: str) -> str:
    return (
        f"no tenant {tenant_id!r}: create it with `cloudskills tenants create {tenant_id}`, "
        "or act for another one (CLOUDSKILLS_TENANT=<name>)."
    )


def current_minute() -> int:
    return int(utcnow().timestamp()) // 60


def locked_tenant(session: Session, tenant_id: str) -> Any:
    """The tenant's money and quotas, its row locked for this transaction."""
    tenant = session.connection().execute(LOCK_TENANT, {"tenant_id": tenant_id}).one_or_none()
    if tenant is None:
        raise NotFound(no_tenant(tenant_id))
    return tenant


def admit(session: Session, tenant_id: str, amount: int) -> Any:
    """Count one more task in on the tenant and hold ``amount``; return the tenant as it now
    stands, for the checks that must pass before the transaction commits."""
    params = {"tenant_id": tenant_id, "hold": amount, "minute": current_minute()}
    tenant = session.connection().execute(ADMIT, params).one_or_none()
    if tenant is None:
        raise NotFound(no_tenant(tenant_id))
    return tenant


def hold(session: Session, tenant_id: str, amount: int) -> Any:
    """Hold ``amount`` more on the tenant; return its money as it now stands, for ``check_budget``."""
    tenant = session.connection().execute(HOLD, {"tenant_id": tenant_id, "hold": amount}).one_or_none()
    if tenant is None:
        raise NotFound(no_tenant(tenant_id))
    return tenant


def release(session: Session, tenant_id: str, amount: int) -> None:
    """Let go of ``amount`` of the tenant's hold, charging nothing."""
    if amount:
        params = {"tenant_id": tenant_id, "total": 0, "release": amount, "ended": 0}
        session.connection().execute(SETTLE, params)


MONEY_OF = select(*_MONEY).where(Tenant.id == bindparam("tenant_id")).with_for_update()


def affordable(session: Session, tenant_id: str, charges: list[Charge]) -> list[Charge]:
    """The charges of an op never refused for money, or none when the budget cannot
    cover them: a read or a delete is then free, and spend never passes the budget."""
    tenant = session.connection().execute(MONEY_OF, {"tenant_id": tenant_id}).one()
    left = left_of(tenant)
    return charges if left is None or left >= sum(c.amount_micros for c in charges) else []


def capped(charges: list[Charge], most: int) -> list[Charge]:
    """The charges cut, from the last, to ``most`` in all (each keeps its quantity)."""
    kept, room = [], most
    for charge in charges:
        amount = min(charge.amount_micros, room)
        room -= amount
        kept.append(replace(charge, amount_micros=amount))
    return kept


def left_of(tenant: Any) -> int | None:
    """What the budget still covers beyond what is spent and held; None without a budget."""
    if tenant.budget_micros is None:
        return None
    return int(tenant.budget_micros - tenant.spent_micros - tenant.held_micros)


def check_budget(
    catalog: PriceCatalog,
    tenant: Any,
    amount: int,
    what: str | None = None,
    ask_less: str | None = None,
    op: str | None = None,
) -> None:
    """Refuse, before any work starts, what the budget cannot cover (``amount`` is
    already held on ``tenant``: the caller's transaction rolls it back)."""
    left_after = left_of(tenant)
    if left_after is not None and left_after < 0:
        raise budget_error(catalog, amount, max(left_after + amount, 0), what, ask_less, op)


def budget_error(
    catalog: PriceCatalog,
    amount: int,
    left: int,
    what: str | None = None,
    ask_less: str | None = None,
    op: str | None = None,
) -> BudgetExceeded:
    """``ask_less``: what of its arguments the call can lower, said only while what is left
    covers the least a call of ``op`` can cost (its fee): else no smaller call would be let in."""
    least = catalog.worst_case(op, Usage()) if op is not None else 0
    advice = f", or ask for less ({ask_less})" if ask_less is not None and left >= least else ""
    return BudgetExceeded(
        f"{what or 'this task'} may cost up to {catalog.format(amount)} but only {catalog.format(max(left, 0))} "
        f"of the budget is left: raise the budget{advice}."
    )


@dataclass(frozen=True)
class Posting:
    """Who is charged, for what, under which idempotency key prefix."""

    key: str
    tenant_id: str
    task_id: str | None
    skill: str
    op: str
    # The tenant's agent the charges are for (the task's caller, the resource's maker).
    agent: str | None = None


def post(
    session: Session,
    catalog: PriceCatalog,
    posting: Posting,
    charges: Sequence[Charge],
    release: int = 0,
    ends_task: bool = False,
    checked: bool = False,
) -> int:
    """Append the charges, release ``release`` of the tenant's hold (and its active task,
    with ``ends_task``); return the total charged.

    A posting whose keys are already in the ledger was settled before: nothing
    is written and 0 is returned, so posting twice is harmless. ``checked``
    skips that look-up for a caller that already holds the only right to settle
    (a task whose final state it has just claimed); the unique keys still refuse
    a second copy."""
    keys = [f"{posting.key}:{charge.item}" for charge in charges]
    if keys and not checked and session.connection().scalar(ALREADY_POSTED, {"keys": keys}):
        return 0
    now = utcnow()
    day = now.strftime("%Y-%m-%d")
    if charges:
        session.connection().execute(
            APPEND,
            [
                {
                    "idempotency_key": key,
                    "tenant_id": posting.tenant_id,
                    "task_id": posting.task_id,
                    "agent": posting.agent,
                    "skill": posting.skill,
                    "op": posting.op,
                    "item": charge.item,
                    "model": charge.model,
                    "quantity": charge.quantity,
                    "amount_micros": charge.amount_micros,
                    "catalog_version": catalog.version,
                    "created_at": now,
                    "day": day,
                }
                for key, charge in zip(keys, charges, strict=True)
            ],
        )
    total = sum(charge.amount_micros for charge in charges)
    params = {"tenant_id": posting.tenant_id, "total": total, "release": release, "ended": int(ends_task)}
    session.connection().execute(SETTLE, params)
    return total


GROUPS = {
    "skill": LedgerEntry.skill,
    "op": LedgerEntry.op,
    "model": LedgerEntry.model,
    "day": LedgerEntry.day,
    "item": LedgerEntry.item,
    "agent": LedgerEntry.agent,
}


@dataclass(frozen=True)
class UsageLine:
    """One group of ledger entries: its key (by the dimensions asked for) and its sums."""

    key: dict[str, str | None]
    quantity: int
    amount_micros: int
    entries: int


def usage_lines(
    session: Session,
    tenant_id: str,
    group_by: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UsageLine]:
    """The tenant's charges summed by ``group_by`` (names from GROUPS), within [since, until)."""
    columns = [GROUPS[name] for name in group_by]
    query = select(*columns, func.sum(LedgerEntry.quantity), func.sum(LedgerEntry.amount_micros), func.count()).where(
        LedgerEntry.tenant_id == tenant_id
    )
    if since is not None:
        query = query.where(LedgerEntry.created_at >= since)
    if until is not None:
        query = query.where(LedgerEntry.created_at < until)
    query = query.group_by(*columns).order_by(*columns)
    lines = []
    for row in session.execute(query):
        *key, quantity, amount, count = row
        lines.append(UsageLine(dict(zip(group_by, key, strict=True)), int(quantity), int(amount), int(count)))
    return lines


def catalog_versions(session: Session, tenant_id: str, since: datetime | None, until: datetime | None) -> list[str]:
    query = select(LedgerEntry.catalog_version).where(LedgerEntry.tenant_id == tenant_id).distinct()
    if since is not None:
        query = query.where(LedgerEntry.created_at >= since)
    if until is not None:
        query = query.where(LedgerEntry.created_at < until)
    return sorted(session.scalars(query))
