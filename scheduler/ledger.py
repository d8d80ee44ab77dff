"""Admission holds and settlement: the only code that moves money.

At admission a task's worst case is held on its tenant (and refused if the
budget cannot cover it). At settlement the task's charges are appended to the
ledger and the hold released, in the same transaction as the task's final
state. Every entry has a unique idempotency key, so no charge is ever written
twice, whatever crashes or retries happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.errors import BudgetExceeded, NotFound
from scheduler.models import LedgerEntry, Tenant, utcnow
from scheduler.pricing import Charge, PriceCatalog


def locked_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant's row, locked for this transaction where the backend can lock rows."""
    tenant = session.scalar(select(Tenant).where(Tenant.id == tenant_id).with_for_update())
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}: create it with `cloudskills tenants create`.")
    return tenant


def hold(session: Session, catalog: PriceCatalog, tenant: Tenant, amount: int) -> None:
    """Reserve ``amount`` on the (locked) tenant, or refuse before any work starts."""
    if tenant.budget_micros is not None:
        left = tenant.budget_micros - tenant.spent_micros - tenant.held_micros
        if amount > left:
            raise BudgetExceeded(
                f"this task may cost up to {catalog.format(amount)} but only {catalog.format(max(left, 0))} "
                "of the budget is left: raise the budget, or lower timeout_s or limits."
            )
    tenant.held_micros += amount


@dataclass(frozen=True)
class Posting:
    """Who is charged, for what, under which idempotency key prefix."""

    key: str
    tenant_id: str
    task_id: str | None
    skill: str
    op: str


def post(session: Session, catalog: PriceCatalog, posting: Posting, charges: Sequence[Charge], release: int = 0) -> int:
    """Append the charges and release ``release`` of the tenant's hold; return the total charged.

    A posting whose key is already in the ledger was settled before: nothing
    is written and 0 is returned, so calling this twice is harmless."""
    keys = [f"{posting.key}:{charge.item}" for charge in charges]
    if keys and session.scalar(select(func.count()).where(LedgerEntry.idempotency_key.in_(keys))):
        return 0
    tenant = locked_tenant(session, posting.tenant_id)
    now = utcnow()
    total = 0
    for key, charge in zip(keys, charges, strict=True):
        session.add(
            LedgerEntry(
                idempotency_key=key,
                tenant_id=posting.tenant_id,
                task_id=posting.task_id,
                skill=posting.skill,
                op=posting.op,
                item=charge.item,
                model=charge.model,
                created_at=now,
                day=now.strftime("%Y-%m-%d"),
                quantity=charge.quantity,
                amount_micros=charge.amount_micros,
                catalog_version=catalog.version,
            )
        )
        total += charge.amount_micros
    tenant.spent_micros += total
    tenant.held_micros = max(tenant.held_micros - release, 0)
    return total


GROUPS = {
    "skill": LedgerEntry.skill,
    "op": LedgerEntry.op,
    "model": LedgerEntry.model,
    "day": LedgerEntry.day,
    "item": LedgerEntry.item,
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
