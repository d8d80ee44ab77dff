"""Leases on a real SQLite store, with no resource behind them: holds, renewals, the stop
at the budget, rate changes and closing, and the books at every step."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from common.errors import BudgetExceeded
from runtime.tenants import update_tenant
from scheduler.leases import Exhausted, Leases
from scheduler.models import Lease, LedgerEntry, Tenant, utcnow
from scheduler.pricing import PriceCatalog, Rate, Usage
from scheduler.store import Store

# 1 micro-unit a unit, and 1,000 units a second: a thing costs 1 micro-unit a millisecond.
CATALOG = PriceCatalog("test-leases", "USD", rates={"thing.ms": Rate(1, 1)})
RATE = Usage.of({"thing.ms": 1000})


def books(store: Store) -> tuple[int, int, int]:
    """The tenant's spent and held, and the ledger's total."""
    with store.transaction() as session:
        tenant = session.get(Tenant, "acme")
        assert tenant is not None
        total = int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))) or 0)
        return tenant.spent_micros, tenant.held_micros, total


def open_one(leases: Leases, resource_id: str, per_s: Usage = RATE) -> None:
    with leases.store.transaction() as session:
        leases.open(session, kind="thing", resource_id=resource_id, tenant_id="acme", op="on", per_s=per_s)


def test_a_lease_holds_ahead_and_is_refused_past_the_budget(store: Store) -> None:
    update_tenant(store, "acme", budget_micros=1500)
    leases = Leases(store, CATALOG, lease_s=1.0)
    open_one(leases, "r1")
    assert books(store) == (0, 1000, 0)
    with pytest.raises(BudgetExceeded) as refused:
        open_one(leases, "r2")
    assert "this thing for 1 s may cost up to 0.001000 USD but only 0.000500 USD" in refused.value.message
    assert books(store) == (0, 1000, 0), "a refused lease holds nothing"
    with store.transaction() as session:
        assert session.get(Lease, "r2") is None


def test_renewals_bill_each_interval_once_and_stop_at_the_budget(store: Store) -> None:
    update_tenant(store, "acme", budget_micros=2500)
    leases = Leases(store, CATALOG, lease_s=1.0)
    open_one(leases, "r1")
    exhausted: list[Exhausted] = []
    deadline = time.monotonic() + 30
    while not exhausted and time.monotonic() < deadline:  # renewing all along as time passes
        exhausted += leases.renew_due(within_s=10)
        spent, held, ledger = books(store)
        assert spent == ledger and spent + held <= 2500
    assert [e.resource_id for e in exhausted] == ["r1"]
    spent, held, ledger = books(store)
    assert held == 0 and spent == ledger <= 2500
    with store.transaction() as session:
        lease = session.get(Lease, "r1")
        assert lease is not None and lease.end_reason == "budget" and lease.ended_at == lease.billed_until
        billed = session.scalar(select(func.sum(LedgerEntry.quantity)).where(LedgerEntry.skill == "thing"))
    # One unit, one micro-unit, a millisecond: what was billed is what was spent, nothing twice.
    assert billed == spent
    assert leases.renew_due(within_s=10) == [], "an ended lease is never renewed again"
    assert books(store)[0] == spent


def test_a_bill_never_reaches_past_what_was_held(store: Store) -> None:
    update_tenant(store, "acme", budget_micros=10_000)
    leases = Leases(store, CATALOG, lease_s=0.05)  # a lease that lapses before anyone renews it
    open_one(leases, "r1")
    with store.transaction() as session:
        lease = session.get(Lease, "r1")
        assert lease is not None
        lapsed_at = lease.lease_until
    while utcnow() < lapsed_at + timedelta(milliseconds=200):
        pass  # the lease lapses: no server renewed it in time
    leases.renew_due(within_s=10)
    spent, held, _ = books(store)
    assert 0 < spent <= 50, "billed up to the end of what was held, not to now"
    assert held == 50


def test_a_rate_change_bills_the_old_rate_and_holds_the_new(store: Store) -> None:
    update_tenant(store, "acme", budget_micros=100_000)
    leases = Leases(store, CATALOG, lease_s=1.0)
    open_one(leases, "r1")
    with store.transaction() as session:
        leases.rerate(session, "r1", op="off", per_s=Usage.of({"thing.ms": 100}))
    spent, held, _ = books(store)
    assert held == 100, "the next lease at the new rate: 100 units a second for 1 s"
    with store.transaction() as session:
        assert leases.close(session, "r1", "deleted") >= 0
        assert leases.close(session, "r1", "deleted") == 0, "closing twice bills nothing more"
    spent_after, held_after, ledger = books(store)
    assert held_after == 0 and spent_after == ledger >= spent
    with store.transaction() as session:
        ops = set(session.scalars(select(LedgerEntry.op).where(LedgerEntry.skill == "thing")))
    assert ops <= {"on", "off"}


def test_a_resource_whose_billing_ended_gets_a_new_lease_when_it_starts_again(store: Store) -> None:
    update_tenant(store, "acme", budget_micros=100_000)
    leases = Leases(store, CATALOG, lease_s=1.0)
    open_one(leases, "r1")
    with store.transaction() as session:
        leases.close(session, "r1", "budget")
        leases.set_rate(session, kind="thing", resource_id="r1", tenant_id="acme", op="on", per_s=RATE)
    assert books(store)[1] == 1000
    with store.transaction() as session:
        lease = session.get(Lease, "r1")
        assert lease is not None and lease.ended_at is None
