"""Per-tenant quotas, checked at admission in the same transaction as the task's insert.

Each check runs with the tenant's row locked (see ``ledger.locked_tenant``), so
concurrent admissions of one tenant are serialized and a quota cannot be
overshot by a race.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.errors import QuotaExceeded
from scheduler.models import LedgerEntry, Sandbox, Task, Tenant, utcnow
from scheduler.pricing import Usage

WINDOW = timedelta(minutes=1)
ACTIVE_STATES = ("queued", "running")
LIVE_SANDBOX_STATES = ("starting", "running")


def retry_after(oldest_in_window: datetime | None) -> int:
    """Whole seconds until the oldest event leaves the one-minute window (at least 1)."""
    if oldest_in_window is None:
        return 1
    left = (oldest_in_window + WINDOW - utcnow()).total_seconds()
    return max(1, math.ceil(left))


def check_tasks(session: Session, tenant: Tenant, worst: Usage) -> None:
    """Concurrent tasks, tasks per minute and tokens per minute."""
    active = session.scalar(
        select(func.count()).select_from(Task).where(Task.tenant_id == tenant.id, Task.state.in_(ACTIVE_STATES))
    )
    if (active or 0) >= tenant.max_concurrent_tasks:
        raise QuotaExceeded(
            f"you have {active} tasks queued or running, your quota's most: wait for one to finish "
            "(tasks_list shows them) and retry."
        )
    since = utcnow() - WINDOW
    recent, oldest = session.execute(
        select(func.count(), func.min(Task.created_at)).where(Task.tenant_id == tenant.id, Task.created_at >= since)
    ).one()
    if recent >= tenant.tasks_per_minute:
        raise QuotaExceeded(
            f"you started {recent} tasks in the last minute, your quota's most: retry in {retry_after(oldest)} s."
        )
    wanted = worst.token_total()
    if wanted:
        used, first = session.execute(
            select(func.coalesce(func.sum(LedgerEntry.quantity), 0), func.min(LedgerEntry.created_at)).where(
                LedgerEntry.tenant_id == tenant.id,
                LedgerEntry.item.startswith("tokens."),
                LedgerEntry.created_at >= since,
            )
        ).one()
        if used + wanted > tenant.tokens_per_minute:
            raise QuotaExceeded(
                f"this call may use {wanted} tokens and you used {used} of your {tenant.tokens_per_minute} "
                f"tokens per minute: lower max_tokens or retry in {retry_after(first)} s."
            )


def check_sandboxes(session: Session, tenant: Tenant) -> None:
    live = session.scalar(
        select(func.count())
        .select_from(Sandbox)
        .where(Sandbox.tenant_id == tenant.id, Sandbox.state.in_(LIVE_SANDBOX_STATES))
    )
    if (live or 0) >= tenant.max_live_sandboxes:
        raise QuotaExceeded(
            f"you have {live} live sandboxes, your quota's most: destroy one with sandbox_destroy "
            "(sandbox_list shows them) or wait for a sandbox_run to finish, then retry."
        )
