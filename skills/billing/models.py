"""What crosses the wire for the billing skill."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from skills.base import Money, OpInput

Dimension = Literal["skill", "op", "model", "day", "item", "agent"]


def default_grouping() -> list[Dimension]:
    return ["skill", "op", "item"]


class UsageInput(OpInput):
    since: datetime | None = Field(default=None, description="Only charges at or after this time (UTC).")
    until: datetime | None = Field(default=None, description="Only charges before this time (UTC).")
    group_by: list[Dimension] = Field(
        default_factory=default_grouping,
        min_length=1,
        description="How to group the charges: any of skill, op, model, day, item, agent (the tenant's agent "
        "that made the call or the resource; null when unnamed).",
    )


class UsageRow(BaseModel):
    skill: str | None = None
    op: str | None = None
    model: str | None = None
    day: str | None = None
    item: str | None = Field(
        default=None, description="task_fee, or a meter such as sandbox.vcpu_ms or tokens.output:<model>."
    )
    agent: str | None = None
    quantity: int
    entries: int
    cost: Money


class UsageOutput(BaseModel):
    rows: list[UsageRow]
    total: Money
    catalog_versions: list[str] = Field(description="The price catalog versions these charges were priced with.")


class BalanceInput(OpInput):
    pass


class StoppedResource(BaseModel):
    resource_id: str = Field(description="A sandbox_id, db_id or vm_id.")
    kind: str = Field(description="Its skill: sandbox, db or vm.")
    stopped_at: str = Field(description="When its billing ended (ISO 8601, UTC).")


class BalanceOutput(BaseModel):
    tenant: str
    spent: Money
    held: Money = Field(
        description="Reserved ahead: the worst case of tasks still queued or running, and the current lease "
        "of every live session sandbox, database and VM."
    )
    budget: Money | None = Field(description="The hard budget; null when there is none.")
    left: Money | None = Field(description="Budget minus spent minus held; null without a budget.")
    alert_at: Money | None = Field(description="The soft alert threshold; null when none is set.")
    alert: bool = Field(description="True once spending has reached the alert threshold.")
    stopped_for_budget: list[StoppedResource] = Field(
        default_factory=list,
        description="Resources stopped because the budget could not cover their next lease, newest first.",
    )


class InvoiceInput(OpInput):
    period: str | None = Field(
        default=None,
        pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
        description="A calendar month, YYYY-MM (UTC); default: the current month.",
    )


class InvoiceLine(BaseModel):
    skill: str
    op: str
    model: str | None
    item: str
    quantity: int
    entries: int
    amount: Money


class InvoiceOutput(BaseModel):
    tenant: str
    period: str
    start: str
    end: str
    lines: list[InvoiceLine]
    total: Money
    currency: str
    catalog_versions: list[str]
