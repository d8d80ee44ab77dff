"""Billing resources that outlive a task (databases, VMs) in contiguous intervals.

A live resource is billed from its ``billed_until`` up to now, again and again
while it lives and a last time when it ends. Each interval's entries carry the
resource's id and the interval's start in their idempotency key, and the new
``billed_until`` is written in the same transaction, so every millisecond of a
resource's life is billed exactly once, whoever bills it and however often.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from scheduler import ledger
from scheduler.pricing import PriceCatalog, Usage


def bill_interval(
    session: Session,
    catalog: PriceCatalog,
    posting: ledger.Posting,
    start: datetime,
    end: datetime,
    per_ms: Usage,
) -> datetime:
    """Charge ``[start, end)`` at ``per_ms`` (what one millisecond uses) and return the new
    billed-until (``start`` plus the whole ms billed)."""
    ms = int((end - start) / timedelta(milliseconds=1))
    if ms <= 0:
        return start
    key = f"{posting.key}:{int(start.timestamp() * 1_000_000)}"
    interval = ledger.Posting(key, posting.tenant_id, posting.task_id, posting.skill, posting.op)
    usage = Usage.of({meter: quantity * ms for meter, quantity in per_ms})
    ledger.post(session, catalog, interval, catalog.usage_charges(usage))
    return start + timedelta(milliseconds=ms)
