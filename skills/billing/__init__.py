"""The billing skill: usage and balance from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from scheduler import ledger
from scheduler.errors import NotFound
from scheduler.models import Tenant
from scheduler.tasks import TaskContext
from skills.base import Money, Op, OpInput, Skill
from skills.registry import front_matter, skill_doc
from skills.services import services


class UsageInput(OpInput):
    since: datetime | None = Field(default=None, description="Only charges at or after this time (UTC).")
    until: datetime | None = Field(default=None, description="Only charges before this time (UTC).")


class UsageRow(BaseModel):
    skill: str
    op: str
    item: str = Field(description="task_fee, vcpu_ms (vCPU-milliseconds) or mib_ms (MiB-milliseconds).")
    quantity: int
    entries: int
    cost: Money


class UsageOutput(BaseModel):
    rows: list[UsageRow]
    total: Money
    catalog_version: str


class BalanceInput(OpInput):
    pass


class BalanceOutput(BaseModel):
    tenant: str
    spent: Money
    held: Money = Field(description="Reserved by tasks that are still running.")
    budget: Money | None = Field(description="The hard budget; null when there is none.")
    left: Money | None


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def usage(ctx: TaskContext, args: UsageInput) -> UsageOutput:
    """The caller's charges by skill, op and item."""
    svc = services(ctx)
    with svc.store.transaction() as session:
        lines = ledger.usage_by_op(session, ctx.tenant_id, utc(args.since), utc(args.until))
    money = svc.scheduler.money
    rows = [
        UsageRow(
            skill=line.skill,
            op=line.op,
            item=line.item,
            quantity=line.quantity,
            entries=line.entries,
            cost=Money(**money(line.amount_micros)),
        )
        for line in lines
    ]
    total = sum(line.amount_micros for line in lines)
    return UsageOutput(rows=rows, total=Money(**money(total)), catalog_version=svc.catalog.version)


async def balance(ctx: TaskContext, args: BalanceInput) -> BalanceOutput:
    """What the caller has spent, holds, and has left."""
    svc = services(ctx)
    with svc.store.transaction() as session:
        tenant = session.get(Tenant, ctx.tenant_id)
        if tenant is None:
            raise NotFound("your tenant no longer exists: ask the operator for a new key.")
        money = svc.scheduler.money
        budget = tenant.budget_micros
        return BalanceOutput(
            tenant=tenant.name,
            spent=Money(**money(tenant.spent_micros)),
            held=Money(**money(tenant.held_micros)),
            budget=None if budget is None else Money(**money(budget)),
            left=None if budget is None else Money(**money(budget - tenant.spent_micros - tenant.held_micros)),
        )


_meta, _body = front_matter(skill_doc(__name__))

SKILL = Skill(
    name=_meta["name"],
    description=_meta["description"],
    doc=_body,
    ops=(
        Op(
            "usage",
            "Your charges by skill, op and item, with the total.",
            UsageInput,
            UsageOutput,
            usage,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "balance",
            "What you have spent, what running tasks hold, and your budget.",
            BalanceInput,
            BalanceOutput,
            balance,
            read_only=True,
            idempotent=True,
        ),
    ),
)
