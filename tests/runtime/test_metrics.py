"""/metrics: the numbers match the store, refusals are counted by reason, and only the operator's
key (or the private metrics address) reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from common.errors import BudgetExceeded, QuotaExceeded
from runtime.app import App
from runtime.server import http_app
from runtime.settings import Settings
from runtime.tenants import create_key, create_tenant, update_tenant
from runtime.web import metrics_app
from sandbox.docker import DockerDriver
from scheduler.models import Lease, LedgerEntry, Task, Tenant

pytestmark = pytest.mark.anyio

OPERATOR = "operator-key-for-tests"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    """A running app (no Docker: SQLite databases are its live resources) with an operator key."""
    application = App(settings.model_copy(update={"operator_key": OPERATOR}), DockerDriver("unix:///nonexistent.sock"))
    async with application.running(serving=False):
        yield application
    application.close()


def client(asgi: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(asgi), base_url="http://127.0.0.1:8000")


async def scrape(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with client(http_app(app, "127.0.0.1", 8000)) as web:
        answer = await web.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


async def test_the_numbers_match_the_store(app: App) -> None:
    create_tenant(app.store, "lean", budget_micros=50)  # less than db_create's fee: refused at admission
    create_tenant(app.store, "slow")
    update_tenant(app.store, "slow", tasks_per_minute=1)
    made = [await app.call("local", "db_create", {"engine": "sqlite"}) for _ in range(2)]
    await app.call("local", "db_delete", {"db_id": made[0].unwrap()["db_id"]})
    await app.call("local", "billing_balance", {})
    with pytest.raises(BudgetExceeded):
        await app.call("lean", "db_create", {"engine": "sqlite"})
    await app.call("slow", "billing_balance", {})
    with pytest.raises(QuotaExceeded):
        await app.call("slow", "billing_balance", {})

    seen = await scrape(app)

    with app.store.transaction() as session:
        by_state = session.execute(
            select(Task.skill, Task.op, Task.state, func.count()).group_by(Task.skill, Task.op, Task.state)
        ).all()
        spent = dict(session.execute(select(Tenant.id, Tenant.spent_micros)).all())
        held = dict(session.execute(select(Tenant.id, Tenant.held_micros)).all())
        ledger_total = session.scalar(select(func.sum(LedgerEntry.amount_micros)))
        ledger_count = session.scalar(select(func.count()).select_from(LedgerEntry))
        live_dbs = session.scalar(select(func.count()).where(Lease.kind == "db", Lease.ended_at.is_(None)))
    assert by_state, "the calls above made tasks"
    for skill, op, state, count in by_state:
        assert seen[("cloudskills_tasks_total", (("op", op), ("skill", skill), ("state", state)))] == count
    for tenant, micros in spent.items():
        assert seen[("cloudskills_tenant_spend_micros_total", (("tenant", tenant),))] == micros
        assert seen[("cloudskills_tenant_held_micros", (("tenant", tenant),))] == held[tenant]
    assert seen[("cloudskills_tenant_budget_micros", (("tenant", "lean"),))] == 50
    assert sum(v for (name, _), v in seen.items() if name == "cloudskills_ledger_micros_total") == ledger_total
    assert sum(v for (name, _), v in seen.items() if name == "cloudskills_ledger_entries_total") == ledger_count
    assert live_dbs == 1
    assert seen[("cloudskills_live_resources", (("kind", "db"),))] == 1
    # Every kind the process serves has its gauge, alive or not.
    for kind in app.services.kinds():
        assert ("cloudskills_live_resources", (("kind", kind.kind),)) in seen
    refusals = "cloudskills_admission_refusals_total"
    assert seen[(refusals, (("op", "create"), ("reason", "budget_exceeded"), ("skill", "db")))] == 1
    assert seen[(refusals, (("op", "balance"), ("reason", "quota_exceeded"), ("skill", "billing")))] == 1
    # Latency per op, for the tasks this process ran: one observation per task.
    creates = ("cloudskills_task_duration_seconds_count", (("op", "create"), ("skill", "db"), ("state", "succeeded")))
    assert seen[creates] == 2
    # A service's own readings: the warm pool's, per template.
    assert any(name == "cloudskills_pool_target" for name, _ in seen)


async def test_only_the_operators_key_reads_them(app: App) -> None:
    tenant_key = create_key(app.store, "local").key
    async with client(http_app(app, "127.0.0.1", 8000)) as web:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {tenant_key}"}):
            refused = await web.get("/metrics", headers=headers)
            assert refused.status_code == 401 and "operator" in refused.text
        assert (await web.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR}"})).status_code == 200


async def test_without_an_operator_key_none_reads_them_on_the_main_address(settings: Settings) -> None:
    application = App(settings, DockerDriver("unix:///nonexistent.sock"))
    try:
        async with client(http_app(application, "127.0.0.1", 8000)) as web:
            assert (await web.get("/metrics", headers={"Authorization": "Bearer "})).status_code == 401
        # The private listener (metrics_address) needs no key.
        async with client(metrics_app(application)) as private:
            answer = await private.get("/metrics")
        assert answer.status_code == 200 and "cloudskills_live_resources" in answer.text
    finally:
        application.close()
