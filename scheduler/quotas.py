"""Per-tenant quotas, checked at admission in the same transaction as the task's insert.

Task quotas are checked on the tenant row as ``ledger.admit`` has just updated
it, and live-count quotas of resource kinds (``scheduler.resources.LiveQuota``) with
the row locked (``ledger.locked_tenant``): either way
concurrent admissions of one tenant are serialized by the row, and a quota
cannot be overshot by a race. A failed check rolls the admission back.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from common.errors import InvalidInput, QuotaExceeded
from scheduler.models import LedgerEntry, utcnow
from scheduler.pricing import Usage

WINDOW = timedelta(minutes=1)


def retry_after(oldest_in_window: datetime | None) -> int:
    """Whole seconds until the oldest event leaves the one-minute window (at least 1)."""
    if oldest_in_window is None:
        return 1
    left = (oldest_in_window + WINDOW - utcnow()).total_seconds()
    return max(1, math.ceil(left))


RECENT_TOKENS = select(func.coalesce(func.sum(LedgerEntry.quantity), 0), func.min(LedgerEntry.created_at)).where(
    LedgerEntry.tenant_id == bindparam("tenant_id"),
    LedgerEntry.item.startswith("tokens."),
    LedgerEntry.created_at >= bindparam("since"),
)


def check_tasks(session: Session, tenant: Any, worst: Usage) -> None:
    """Concurrent tasks, tasks per minute and tokens per minute, for a tenant just
    admitted (see ``ledger.admit``: its counts include the task being checked)."""
    if tenant.active_tasks > tenant.max_concurrent_tasks:
        raise QuotaExceeded(
            f"you have {tenant.active_tasks - 1} tasks queued or running, your quota's most: wait for one to "
            "finish (tasks_list shows them) and retry."
        )
    now = utcnow()
    if tenant.window_tasks > tenant.tasks_per_minute:
        retry_in = 60 - int(now.timestamp()) % 60
        raise QuotaExceeded(
            f"you started {tenant.window_tasks - 1} tasks this minute, your quota's most: retry in {retry_in} s."
        )
    since = now - WINDOW
    wanted = worst.token_total()
    if wanted > tenant.tokens_per_minute:
        # No wait makes room for it: a retry (which OpenAI clients make on their own for a
        # 429) would be refused again, so this is the call's fault, not the minute's.
        raise InvalidInput(
            f"this call may use {wanted} tokens (a bound that counts a token per byte of text), more than your "
            f"whole quota of {tenant.tokens_per_minute} tokens per minute: send less text, or lower max_tokens "
            "where the call has one (or have the quota raised)."
        )
    if wanted:
        used, first = session.connection().execute(RECENT_TOKENS, {"tenant_id": tenant.id, "since": since}).one()
        if used + wanted > tenant.tokens_per_minute:
            raise QuotaExceeded(
                f"this call may use {wanted} tokens and you used {used} of your {tenant.tokens_per_minute} "
                f"tokens per minute: lower max_tokens or retry in {retry_after(first)} s."
            )
