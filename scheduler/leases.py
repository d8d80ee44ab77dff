"""Leases: how anything that outlives its call pays for its life, within the budget.

A long-lived resource (whatever a skill keeps alive past the call that made it)
cannot know its worst case, so it never holds it. It holds one *lease*
instead: the price of ``lease_s`` of its running cost, held on the tenant when
it is created and refused then if the budget cannot cover it.

    open ──▶ hold one lease ──▶ renew: bill [billed_until, now), hold the next lease
                                        (one transaction) ──▶ ... ──▶ close: bill, release

A renewal bills what the resource used since its last bill and holds the next
lease in the same transaction; when the budget cannot cover that next lease,
the lease ends then and there: billing stops at that instant, the hold is
released, and the resource's kind is told to stop it (``exhausted`` lists the
ones to stop). A bill never reaches past ``lease_until``, so no resource is
ever charged more than was held for it: whatever the interleaving, a tenant's
spend stays within its budget.

Each bill's entries carry the resource's id and the bill's start in their
idempotency key, so every millisecond is billed once, whoever bills it. A
change of rate (a machine that stops keeps only its disk) bills up to the change at
the old rate and holds the next lease at the new one.

This module names no resource kind: a kind hands it a resource id, the ledger's
``skill``/``op`` for its entries, and what one millisecond of it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import BudgetExceeded
from scheduler import ledger
from scheduler.models import Lease, utcnow
from scheduler.pricing import PriceCatalog, Usage, div_round_half_up
from scheduler.store import Store

# How long one lease runs: long enough that renewals are rare, short enough that
# a resource never holds much more money than it is about to use.
DEFAULT_LEASE_S = 300.0


def ms_between(start: datetime, end: datetime) -> int:
    return max(int((end - start) / timedelta(milliseconds=1)), 0)


def used_in(per_s: Usage, ms: int) -> Usage:
    """What ``ms`` milliseconds use at ``per_s`` (a rate per second keeps fractional
    rates, half a vCPU, in whole units), rounded once per meter."""
    return Usage.of({meter: div_round_half_up(quantity * ms, 1000) for meter, quantity in per_s})


@dataclass(frozen=True)
class Exhausted:
    """A lease the budget could not renew: its resource must stop now (billing has)."""

    kind: str
    resource_id: str
    tenant_id: str


class Leases:
    def __init__(
        self, store: Store, catalog: PriceCatalog, lease_s: float = DEFAULT_LEASE_S, place: str | None = None
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.lease_s = lease_s
        self.place = place  # where this process makes resources (``scheduler.routing``)

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def price(self, per_s: Usage, ms: int) -> int:
        return sum(charge.amount_micros for charge in self.catalog.usage_charges(used_in(per_s, ms)))

    # -- the kinds' side: within their own transactions ---------------------

    def open(
        self,
        session: Session,
        *,
        kind: str,
        resource_id: str,
        tenant_id: str,
        op: str,
        per_s: Usage,
        agent: str | None = None,
    ) -> Lease:
        """Hold the first lease of a new (or restarted) resource, or refuse it for money.

        Runs in the caller's transaction, so a refusal rolls back the resource's
        record with it. Its bills are ``agent``'s (by default, the agent the running
        task acts for)."""
        now = utcnow()
        hold = self.price(per_s, self.lease_ms)
        ledger.locked_tenant(session, tenant_id)
        self._hold(session, tenant_id, hold, what=f"this {kind} for {self.lease_s:g} s")
        row = session.get(Lease, resource_id, with_for_update=True)
        if row is None:
            row = Lease(id=resource_id, tenant_id=tenant_id, kind=kind)
            session.add(row)
        row.op, row.rate, row.held_micros = op, dict(per_s.meters), hold
        row.agent = agent if agent is not None else ledger.acting_agent.get()
        row.billed_until, row.lease_until = now, now + timedelta(milliseconds=self.lease_ms)
        row.ended_at = row.end_reason = None
        row.place = row.place or self.place  # it lives where it was first made
        return row

    def made_elsewhere(self, place: str) -> bool:
        """Whether a live resource was made at a place other than ``place``."""
        with self.store.transaction() as session:
            found = session.scalar(
                select(Lease.id)
                .where(Lease.ended_at.is_(None), Lease.place.is_not(None), Lease.place != place)
                .limit(1)
            )
        return found is not None

    def places_of(self, resource_ids: list[str]) -> dict[str, str]:
        """Where each resource that has a place was made (see ``Lease.place``)."""
        with self.store.transaction() as session:
            rows = session.execute(select(Lease.id, Lease.place).where(Lease.id.in_(resource_ids)))
            return {resource_id: place for resource_id, place in rows if place is not None}

    def rerate(self, session: Session, resource_id: str, *, op: str, per_s: Usage) -> None:
        """Bill up to now at the old rate, then hold the next lease at the new one.

        Refused (``BudgetExceeded``, the caller's transaction rolls back) when
        the budget cannot cover the new lease."""
        row = self._active(session, resource_id)
        if row is None:
            return
        now = utcnow()
        self._bill(session, row, now)
        ledger.release(session, row.tenant_id, row.held_micros)
        hold = self.price(per_s, self.lease_ms)
        self._hold(session, row.tenant_id, hold, what=f"this {row.kind} for {self.lease_s:g} s")
        row.op, row.rate, row.held_micros = op, dict(per_s.meters), hold
        row.lease_until = now + timedelta(milliseconds=self.lease_ms)

    def lower_rate(
        self, session: Session, *, kind: str, resource_id: str, tenant_id: str, op: str, per_s: Usage
    ) -> None:
        """``set_rate`` to a lower rate, never refused for money (it only lowers what the tenant
        spends, like a close): where the budget cannot hold a new lease, what ran is billed at
        the old rate and the lease runs out at the new one under the hold it already has
        (taken at the higher rate); its renewal then stops the resource, as it would have."""
        try:
            with session.begin_nested():
                self.set_rate(session, kind=kind, resource_id=resource_id, tenant_id=tenant_id, op=op, per_s=per_s)
        except BudgetExceeded:
            row = self._active(session, resource_id)
            if row is None:
                return  # its billing ended already: the renewal loop stops it
            self._bill(session, row, utcnow())
            row.op, row.rate = op, dict(per_s.meters)

    def set_rate(self, session: Session, *, kind: str, resource_id: str, tenant_id: str, op: str, per_s: Usage) -> None:
        """``rerate`` a resource with an open lease; ``open`` one for a resource whose
        billing had ended (one stopped for money, started again)."""
        if self._active(session, resource_id) is None:
            self.open(session, kind=kind, resource_id=resource_id, tenant_id=tenant_id, op=op, per_s=per_s)
        else:
            self.rerate(session, resource_id, op=op, per_s=per_s)

    def close(self, session: Session, resource_id: str, reason: str, end: datetime | None = None) -> int:
        """End a resource's billing at ``end`` (now): bill the last interval and release
        the rest of its hold; return what was billed. Closing twice bills nothing."""
        row = self._active(session, resource_id)
        if row is None:
            return 0
        end = end or utcnow()
        billed = self._bill(session, row, end)
        ledger.release(session, row.tenant_id, row.held_micros)
        row.held_micros, row.ended_at, row.end_reason = 0, row.billed_until, reason
        return billed

    def check(self, session: Session, tenant_id: str, kind: str, per_s: Usage, ask_less: str | None = None) -> None:
        """Refuse, without holding anything, a resource whose first lease the budget
        cannot cover (before its kind makes anything costly); ``ask_less``: what of it the
        caller can make smaller, for the refusal's advice."""
        tenant = ledger.locked_tenant(session, tenant_id)
        hold = self.price(per_s, self.lease_ms)
        left = ledger.left_of(tenant)
        if left is not None and left < hold:
            raise ledger.budget_error(self.catalog, hold, left, f"this {kind} for {self.lease_s:g} s", ask_less)

    # -- the process's side: the renewal loop -------------------------------

    def renew_due(self, within_s: float | None = None) -> list[Exhausted]:
        """Renew every lease that ends within ``within_s`` (half a lease); return the
        ones the budget could not renew, whose resources must stop."""
        horizon = utcnow() + timedelta(seconds=self.lease_s / 2 if within_s is None else within_s)
        with self.store.transaction() as session:
            due = list(session.scalars(select(Lease.id).where(Lease.ended_at.is_(None), Lease.lease_until <= horizon)))
        exhausted = []
        for resource_id in due:
            with self.store.transaction() as session:
                ended = self._renew(session, resource_id)
            if ended is not None:
                exhausted.append(ended)
        return exhausted

    def _renew(self, session: Session, resource_id: str) -> Exhausted | None:
        row = self._active(session, resource_id)
        if row is None:
            return None
        now = utcnow()
        self._bill(session, row, now)
        ledger.release(session, row.tenant_id, row.held_micros)
        hold = self.price(Usage.of(row.rate), self.lease_ms)
        try:
            self._hold(session, row.tenant_id, hold, what="")
        except BudgetExceeded:
            ledger.release(session, row.tenant_id, hold)
            row.held_micros, row.ended_at, row.end_reason = 0, row.billed_until, "budget"
            return Exhausted(row.kind, row.id, row.tenant_id)
        row.held_micros = hold
        row.lease_until = now + timedelta(milliseconds=self.lease_ms)
        return None

    # -- inside ---------------------------------------------------------------

    def _active(self, session: Session, resource_id: str) -> Lease | None:
        """The resource's lease, its tenant's row and then its own locked (in that order
        everywhere, so two renewals never deadlock on PostgreSQL); None once it ended."""
        tenant_id = session.scalar(select(Lease.tenant_id).where(Lease.id == resource_id))
        if tenant_id is None:
            return None
        ledger.locked_tenant(session, tenant_id)
        row = session.get(Lease, resource_id, with_for_update=True, populate_existing=True)
        return row if row is not None and row.ended_at is None else None

    def _hold(self, session: Session, tenant_id: str, amount: int, what: str) -> None:
        tenant = ledger.hold(session, tenant_id, amount)
        ledger.check_budget(self.catalog, tenant, amount, what=what or None)

    def _bill(self, session: Session, row: Lease, end: datetime) -> int:
        """Charge ``[billed_until, min(end, lease_until))``, out of the lease's hold: never past
        what was held, in time or in money. What it charges moves from held to spent, so
        ``held_micros`` is always what the lease still holds (a lease billed twice under one
        hold, as when its rate was lowered, cannot pass it by a rounding)."""
        stop = min(end, row.lease_until)
        ms = ms_between(row.billed_until, stop)
        if ms == 0:
            return 0
        key = f"lease:{row.id}:{int(row.billed_until.timestamp() * 1_000_000)}"
        posting = ledger.Posting(key, row.tenant_id, None, row.kind, row.op, row.agent)
        usage = used_in(Usage.of(row.rate), ms)
        charges = ledger.capped(self.catalog.usage_charges(usage), row.held_micros)
        total = ledger.post(session, self.catalog, posting, charges, release=sum(c.amount_micros for c in charges))
        row.held_micros -= total
        row.billed_until = row.billed_until + timedelta(milliseconds=ms)
        return total


def lease_view(row: Lease | None) -> dict[str, Any]:
    """What a resource's owner sees of its billing (for describe ops)."""
    if row is None:
        return {}
    return {
        "billed_until": row.billed_until.isoformat(),
        "lease_until": row.lease_until.isoformat(),
        "held_micros": row.held_micros,
        "billing_ended": row.end_reason,
    }
