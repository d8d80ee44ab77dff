"""The billing skill's handlers: everything is read from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from common.errors import NotFound
from scheduler import ledger
from scheduler.models import Lease, Tenant, utcnow
from scheduler.pricing import PriceCatalog
from scheduler.store import Store
from scheduler.tasks import TaskContext
from skills.base import Money
from skills.billing.models import (
    BalanceInput,
    BalanceOutput,
    InvoiceInput,
    InvoiceLine,
    InvoiceOutput,
    StoppedResource,
    UsageInput,
    UsageOutput,
    UsageRow,
)


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def money(catalog: PriceCatalog, micros: int) -> Money:
    return Money(micros=micros, amount=catalog.format(micros))


async def usage(ctx: TaskContext, args: UsageInput) -> UsageOutput:
    """The caller's charges, grouped as asked."""
    store, prices = ctx.service(Store), ctx.service(PriceCatalog)
    since, until = utc(args.since), utc(args.until)
    group_by = list(dict.fromkeys(args.group_by))
    with store.transaction() as session:
        lines = ledger.usage_lines(session, ctx.tenant_id, group_by, since, until)
        versions = ledger.catalog_versions(session, ctx.tenant_id, since, until)
    rows = [
        UsageRow(**line.key, quantity=line.quantity, entries=line.entries, cost=money(prices, line.amount_micros))
        for line in lines
    ]
    total = sum(line.amount_micros for line in lines)
    return UsageOutput(rows=rows, total=money(prices, total), catalog_versions=versions)


async def balance(ctx: TaskContext, args: BalanceInput) -> BalanceOutput:
    """What the caller has spent, holds, and has left."""
    store, prices = ctx.service(Store), ctx.service(PriceCatalog)
    with store.transaction() as session:
        tenant = session.get(Tenant, ctx.tenant_id)
        if tenant is None:
            raise NotFound("your tenant no longer exists: ask the operator for a new key.")
        budget, alert_at = tenant.budget_micros, tenant.alert_micros
        return BalanceOutput(
            tenant=tenant.name,
            spent=money(prices, tenant.spent_micros),
            held=money(prices, tenant.held_micros),
            budget=None if budget is None else money(prices, budget),
            left=None if budget is None else money(prices, budget - tenant.spent_micros - tenant.held_micros),
            alert_at=None if alert_at is None else money(prices, alert_at),
            alert=alert_at is not None and tenant.spent_micros >= alert_at,
            stopped_for_budget=[
                StoppedResource(resource_id=lease.id, kind=lease.kind, stopped_at=lease.billed_until.isoformat())
                for lease in session.scalars(STOPPED_FOR_BUDGET.where(Lease.tenant_id == ctx.tenant_id))
            ],
        )


STOPPED_FOR_BUDGET = select(Lease).where(Lease.end_reason == "budget").order_by(Lease.ended_at.desc()).limit(20)


def month_bounds(period: str | None) -> tuple[str, datetime, datetime]:
    if period is None:
        now = utcnow()
        period = f"{now.year:04d}-{now.month:02d}"
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return period, start, end


async def invoice(ctx: TaskContext, args: InvoiceInput) -> InvoiceOutput:
    """A month's charges as invoice lines with the total."""
    store, prices = ctx.service(Store), ctx.service(PriceCatalog)
    period, start, end = month_bounds(args.period)
    with store.transaction() as session:
        lines = ledger.usage_lines(session, ctx.tenant_id, ["skill", "op", "model", "item"], start, end)
        versions = ledger.catalog_versions(session, ctx.tenant_id, start, end)
    invoice_lines = [
        InvoiceLine(
            skill=line.key["skill"] or "",
            op=line.key["op"] or "",
            model=line.key["model"],
            item=line.key["item"] or "",
            quantity=line.quantity,
            entries=line.entries,
            amount=money(prices, line.amount_micros),
        )
        for line in lines
    ]
    return InvoiceOutput(
        tenant=ctx.tenant_id,
        period=period,
        start=start.isoformat(),
        end=end.isoformat(),
        lines=invoice_lines,
        total=money(prices, sum(line.amount_micros for line in lines)),
        currency=prices.currency,
        catalog_versions=versions,
    )


def invoice_csv(result: InvoiceOutput) -> list[list[str]]:
    """The invoice as CSV rows: a header, one row a line, and the total."""
    rows = [["period", "skill", "op", "model", "item", "quantity", "entries", "amount_micros", "amount"]]
    for line in result.lines:
        rows.append(
            [
                result.period,
                line.skill,
                line.op,
                line.model or "",
                line.item,
                str(line.quantity),
                str(line.entries),
                str(line.amount.micros),
                line.amount.amount,
            ]
        )
    rows.append([result.period, "", "", "", "total", "", "", str(result.total.micros), result.total.amount])
    return rows
