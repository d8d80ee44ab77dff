"""What the console shows, read from the store: every query of a tenant's rows is scoped to
that tenant here, so no page can show another's.

Live resources come from the leases (what lives, what it holds, at what rate),
whatever their kind: a lease's bills carry its id in their idempotency key
(``lease:<id>:<start>``), so what a resource has cost so far is the sum of its
bills plus what it has used since the last one, and its age runs from the start
of its first bill.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.leases import Leases, ms_between
from scheduler.models import Lease, LedgerEntry, Task, Tenant, utcnow
from scheduler.pricing import TOKENS_PER_MILLION, Usage
from scheduler.tasks import FINAL_STATES
from skills.registry import Registry


@dataclass(frozen=True)
class Balance:
    spent: int
    held: int
    budget: int | None
    alert: int | None

    @property
    def left(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.spent - self.held, 0)

    @property
    def alerting(self) -> bool:
        return self.alert is not None and self.spent >= self.alert


def balance(session: Session, tenant_id: str) -> Balance | None:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return None
    return Balance(tenant.spent_micros, tenant.held_micros, tenant.budget_micros, tenant.alert_micros)


def spend_by_day(session: Session, tenant_id: str, by: str, days: int = 14) -> tuple[list[str], dict[str, list[int]]]:
    """The last ``days`` UTC days, and each ``by`` (skill or agent)'s spend on each of them."""
    today = utcnow().date()
    labels = [(today - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
    column = LedgerEntry.skill if by == "skill" else LedgerEntry.agent
    rows = session.execute(
        select(LedgerEntry.day, column, func.sum(LedgerEntry.amount_micros))
        .where(LedgerEntry.tenant_id == tenant_id, LedgerEntry.day >= labels[0])
        .group_by(LedgerEntry.day, column)
    ).all()
    index = {day: i for i, day in enumerate(labels)}
    series: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    for day, name, amount in rows:
        if day in index and amount:
            series[name or "(unnamed)"][index[day]] += int(amount)
    return labels, dict(sorted(series.items()))


@dataclass(frozen=True)
class LiveResource:
    id: str
    kind: str
    tenant_id: str
    agent: str | None
    state: str  # what its lease bills: lifetime, running, storage...
    age_s: float
    cost_micros: int
    held_micros: int
    destroy_tool: str | None  # the tool that ends it, called like any other (App.call)


def destroy_tool(registry: Registry, kind: str) -> str | None:
    """The kind's op that ends one of its resources by its ``<kind>_id`` alone: destructive,
    never refused for money, and needing no other argument (a kill of one of a sandbox's
    processes, or a delete of one of a workspace's snapshots, also takes the id, and more)."""
    for skill in registry.skills:
        if skill.name != kind:
            continue
        for op in skill.ops:
            required = {name for name, field in op.input.model_fields.items() if field.is_required()}
            if op.destructive and op.releases and required == {f"{kind}_id"}:
                return f"{skill.name}_{op.name}"
    return None


def live_resources(
    session: Session, leases: Leases, registry: Registry, tenant_id: str | None, resource_id: str | None = None
) -> list[LiveResource]:
    """The tenant's live resources (every tenant's for the operator: ``tenant_id`` None)."""
    query = select(Lease).where(Lease.ended_at.is_(None)).order_by(Lease.kind, Lease.id)
    if tenant_id is not None:
        query = query.where(Lease.tenant_id == tenant_id)
    if resource_id is not None:
        query = query.where(Lease.id == resource_id)
    now, found = utcnow(), []
    for lease in session.scalars(query):
        first_key, billed = session.execute(
            select(func.min(LedgerEntry.idempotency_key), func.coalesce(func.sum(LedgerEntry.amount_micros), 0)).where(
                LedgerEntry.tenant_id == lease.tenant_id, LedgerEntry.idempotency_key.startswith(f"lease:{lease.id}:")
            )
        ).one()
        opened = lease.billed_until
        if first_key is not None:
            opened = min(opened, datetime.fromtimestamp(int(first_key.rsplit(":", 1)[1]) / 1e6, opened.tzinfo))
        accrued = leases.price(Usage.of(lease.rate), ms_between(lease.billed_until, min(now, lease.lease_until)))
        found.append(
            LiveResource(
                id=lease.id,
                kind=lease.kind,
                tenant_id=lease.tenant_id,
                agent=lease.agent,
                state=lease.op,
                age_s=(now - opened).total_seconds(),
                cost_micros=int(billed) + accrued,
                held_micros=lease.held_micros,
                destroy_tool=destroy_tool(registry, lease.kind),
            )
        )
    return found


def recent_tasks(session: Session, tenant_id: str, limit: int = 25) -> list[Task]:
    query = select(Task).where(Task.tenant_id == tenant_id).order_by(Task.created_at.desc(), Task.id).limit(limit)
    return list(session.scalars(query))


def task_of(session: Session, tenant_id: str | None, task_id: str) -> tuple[Task, list[LedgerEntry]] | None:
    """One task and its charges; None if it is not the tenant's (any tenant's for the operator)."""
    task = session.get(Task, task_id)
    if task is None or (tenant_id is not None and task.tenant_id != tenant_id):
        return None
    entries = session.scalars(select(LedgerEntry).where(LedgerEntry.task_id == task_id).order_by(LedgerEntry.id))
    return task, list(entries)


def duration_s(task: Task) -> float | None:
    if task.finished_at is None:
        return None
    return (task.finished_at - (task.started_at or task.created_at)).total_seconds()


@dataclass(frozen=True)
class ModelStats:
    model: str
    tokens: dict[str, int]  # input, cached_input, output
    cost_micros: int  # what its tokens cost
    latency_s: dict[str, float]  # p50, p95, p99 of its tasks

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def per_million_micros(self) -> int | None:
        total = self.total_tokens
        return None if not total else self.cost_micros * TOKENS_PER_MILLION // total


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def model_stats(session: Session, tenant_id: str, recent: int = 2000) -> list[ModelStats]:
    """Per model: tokens by kind, their cost, and the latency of the tenant's last ``recent`` calls."""
    tokens: dict[str, dict[str, int]] = defaultdict(dict)
    cost: dict[str, int] = defaultdict(int)
    token_rows = session.execute(
        select(LedgerEntry.model, LedgerEntry.item, func.sum(LedgerEntry.quantity), func.sum(LedgerEntry.amount_micros))
        .where(
            LedgerEntry.tenant_id == tenant_id, LedgerEntry.model.is_not(None), LedgerEntry.item.startswith("tokens.")
        )
        .group_by(LedgerEntry.model, LedgerEntry.item)
    ).all()
    for model, item, quantity, amount in token_rows:
        kind = item.split(":", 1)[0].removeprefix("tokens.")
        tokens[str(model)][kind] = tokens[str(model)].get(kind, 0) + int(quantity)
        cost[str(model)] += int(amount)
    timed = session.execute(
        select(LedgerEntry.model, Task.started_at, Task.finished_at)
        .join(Task, Task.id == LedgerEntry.task_id)
        .where(LedgerEntry.tenant_id == tenant_id, LedgerEntry.model.is_not(None), Task.finished_at.is_not(None))
        .group_by(LedgerEntry.model, Task.id, Task.started_at, Task.finished_at)
        .order_by(Task.finished_at.desc())
        .limit(recent)
    ).all()
    latencies: dict[str, list[float]] = defaultdict(list)
    for model, started, finished in timed:
        if started is not None and finished is not None:
            latencies[str(model)].append((finished - started).total_seconds())
    stats = []
    for model in sorted(tokens):
        values = latencies.get(model, [])
        marks = {f"p{int(f * 100)}": percentile(values, f) for f in (0.5, 0.95, 0.99)} if values else {}
        stats.append(ModelStats(model, tokens[model], cost[model], marks))
    return stats


@dataclass(frozen=True)
class TenantRow:
    tenant: Tenant
    live: int
    active_tasks: int
    tasks: int


def tenants_overview(session: Session) -> list[TenantRow]:
    """Every tenant, for the operator: money, live resources, tasks."""
    live = dict(
        session.execute(
            select(Lease.tenant_id, func.count()).where(Lease.ended_at.is_(None)).group_by(Lease.tenant_id)
        ).all()
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for tenant_id, state, count in session.execute(
        select(Task.tenant_id, Task.state, func.count()).group_by(Task.tenant_id, Task.state)
    ):
        counts[tenant_id][0] += count
        if state not in FINAL_STATES:
            counts[tenant_id][1] += count
    tenants = session.scalars(select(Tenant).order_by(Tenant.created_at))
    return [TenantRow(t, int(live.get(t.id, 0)), counts[t.id][1], counts[t.id][0]) for t in tenants]


def json_preview(value: Any) -> str:
    """A task's stored arguments or result, as readable JSON (escaped by the template)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) if value is not None else ""
