"""Storage on a lease (``scheduler.leases``): what a resource stores, every MiB begun
counted whole, for any kind that stores data (a memory namespace, a channel).

A write that needs more MiB than the lease bills raises its rate at once, in the
write's transaction, and is refused when the budget cannot cover that lease; a
stopped resource starts billing again on a write the budget covers. Billing less
never refuses: when even the smaller lease cannot be held, the resource is stopped
(billing ends, what it stores is kept and still read), as the renewal loop stops it
when a lease cannot be renewed. A kind chooses when less is billed: at once
(``shrink``), or on its reaper's next pass (``settle``), so that a resource that
empties and fills between passes does not reopen its lease each time.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from common.errors import BudgetExceeded
from scheduler.leases import Leases
from scheduler.pricing import Usage

MIB = 1 << 20


class Stored(Protocol):
    """A resource's row as this module reads and writes it."""

    id: str
    tenant_id: str
    name: str
    state: str  # "live" or "stopped" (billing ended for money), among the kind's own
    stored_bytes: int
    billed_mib: int


def stored_mib(row: Stored) -> int:
    return -(-row.stored_bytes // MIB)


class StorageLease:
    def __init__(self, leases: Leases, kind: str, meter: str, stopped: str) -> None:
        self.leases = leases
        self.kind = kind
        self.meter = meter
        # Why a write to a stopped one is refused, before the budget's own words: "{name} is stopped, ...".
        self.stopped = stopped

    def charge(self, session: Session, row: Stored, shrink: bool = False) -> None:
        """After a write: bill what the resource stores now, if more than its lease bills
        (or, with ``shrink``, if it differs). Raises ``BudgetExceeded`` (the write's
        transaction then rolls back) when the budget cannot cover the lease."""
        mib = stored_mib(row)
        if row.state == "stopped":
            try:
                self._set_rate(session, row, mib)
            except BudgetExceeded as exc:
                why = self.stopped.format(name=repr(row.name))
                raise BudgetExceeded(f"{why}; {exc.message[0].lower()}{exc.message[1:]}") from exc
            row.state = "live"
        elif mib > row.billed_mib or (shrink and mib != row.billed_mib):
            self._set_rate(session, row, mib)

    def settle(self, session: Session, row: Stored) -> None:
        """Bill what the resource stores now, after a delete or an expiry; never refused."""
        mib = stored_mib(row)
        if row.state != "live" or mib == row.billed_mib:
            return
        try:
            with session.begin_nested():
                self._set_rate(session, row, mib)
        except BudgetExceeded:
            self.stop(session, row, "budget")

    def stop(self, session: Session, row: Stored, reason: str) -> None:
        """End the resource's billing now (``budget``: it is stopped; ``deleted``)."""
        self.leases.close(session, row.id, reason)
        row.billed_mib = 0
        if reason == "budget":
            row.state = "stopped"

    def _set_rate(self, session: Session, row: Stored, mib: int) -> None:
        if mib == 0:
            self.leases.close(session, row.id, "empty")
        else:
            per_s = Usage.of({self.meter: mib * 1000})
            self.leases.set_rate(
                session, kind=self.kind, resource_id=row.id, tenant_id=row.tenant_id, op="storage", per_s=per_s
            )
        row.billed_mib = mib
