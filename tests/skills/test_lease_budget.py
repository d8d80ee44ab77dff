"""A budget holds for what outlives its call: session sandboxes, databases and a VM on
short leases, with concurrent calls, against a small budget, on the real backends.

The balance is sampled all along: spent plus held never passes the budget, at any
sample or at the end; every resource is stopped when its lease can no longer be
renewed; and the tenant, out of money, can still see and clean up everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from runtime.app import App
from runtime.settings import Settings, load_settings
from runtime.tenants import update_tenant
from sandbox.docker import DockerDriver
from scheduler.models import Lease, LedgerEntry, Task, Tenant
from skills.db.rows import Database
from skills.sandbox.records import LIVE_STATES
from skills.sandbox.rows import Sandbox
from skills.vm.rows import Vm
from tests.conftest import clean_up, sandboxes_in_use
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BUDGET = 3_000  # micro-units: the fees of the creates and some seconds of everything's running cost


@pytest.fixture
def lease_settings(settings: Settings) -> Settings:
    # One-second leases renewed every 0.1 s: the budget runs out within a test's time.
    return load_settings(lease_s=1.0, reap_interval_s=0.1, pool_size=1, auto_confirm=True)


@pytest.fixture
async def lease_app(lease_settings: Settings, docker_driver: DockerDriver) -> AsyncIterator[App]:
    """An app on short leases; whatever a failing test leaves is removed all the same."""
    app = App(lease_settings, docker_driver)
    try:
        yield app
    finally:
        await clean_up(app, docker_driver)
        app.close()


def balance(app: App) -> tuple[int, int]:
    with app.store.transaction() as session:
        tenant = session.get(Tenant, "local")
        assert tenant is not None
        return tenant.spent_micros, tenant.held_micros


def open_leases(app: App) -> int:
    with app.store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Lease).where(Lease.ended_at.is_(None))) or 0)


def all_stopped(app: App) -> bool:
    """Every lease ended and every resource's stop done: a lease ends in the books first,
    then its resource is stopped (a VM's shutdown takes a moment in "stopping")."""
    with app.store.transaction() as session:
        vms = set(session.scalars(select(Vm.state).where(Vm.state != "deleted")))
        dbs = set(session.scalars(select(Database.state).where(Database.state != "deleted")))
        sandboxes = session.scalar(select(func.count()).select_from(Sandbox).where(Sandbox.state.in_(LIVE_STATES)))
    return open_leases(app) == 0 and vms <= {"stopped"} and dbs <= {"suspended"} and sandboxes == 0


async def test_spend_never_passes_the_budget_and_everything_stops_at_it(lease_app: App) -> None:
    app = lease_app
    update_tenant(app.store, "local", budget_micros=BUDGET, tasks_per_minute=100_000)
    samples: list[tuple[int, int]] = []

    async def sample(done: anyio.Event) -> None:
        while not done.is_set():
            samples.append(balance(app))
            await anyio.sleep(0.02)

    async def busy(client: Any, tool: str, **arguments: Any) -> None:
        """Call again and again until a call is refused or the resource is gone."""
        while True:
            result = await client.call_tool(tool, arguments)
            if result.is_error:
                return

    async with app.running(), mcp_client(app) as client:
        done = anyio.Event()
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(sample, done)
            created: dict[str, list[str]] = {"sandbox": [], "db": [], "vm": []}

            async def make(kind: str, tool: str, key: str, **arguments: Any) -> None:
                result = await client.call_tool(tool, arguments)
                if not result.is_error:
                    created[kind].append(result.structured_content[key])

            await make("vm", "vm_create", "vm_id")  # booted first: its boot alone takes seconds
            async with anyio.create_task_group() as makers:
                for _ in range(3):
                    makers.start_soon(make, "sandbox", "sandbox_create", "sandbox_id")
                # large: its storage costs a few micro-units a second, so a 1 s lease holds something
                makers.start_soon(partial(make, "db", "db_create", "db_id", engine="sqlite", size="large"))
                makers.start_soon(partial(make, "db", "db_create", "db_id", engine="postgres"))
            assert all(created.values()), f"every kind was created: {created}"

            async with anyio.create_task_group() as calls:
                for sandbox_id in created["sandbox"]:
                    calls.start_soon(partial(busy, client, "sandbox_exec", sandbox_id=sandbox_id, command="true"))
                for db_id in created["db"]:
                    calls.start_soon(partial(busy, client, "db_query", db_id=db_id, sql="SELECT 1"))
            await until(lambda: all_stopped(app), "every lease to end at the budget and its resource to stop", 120)
            done.set()

        # Out of money, the tenant still sees and cleans up everything.
        shown = await call(client, "billing_balance")
        assert shown["left"]["micros"] >= 0 and shown["held"]["micros"] == 0
        assert {r["kind"] for r in shown["stopped_for_budget"]} == {"sandbox", "db", "vm"}
        assert (await call(client, "sandbox_list"))["sandboxes"] == []
        listed = await call(client, "db_list")
        assert {d["state"] for d in listed["databases"]} == {"suspended"}
        assert "budget" in await call_error(client, "db_query", db_id=created["db"][0], sql="SELECT 1")
        vms = await call(client, "vm_list")
        assert [v["state"] for v in vms["vms"]] == ["stopped"]
        for db_id in created["db"]:
            assert (await call(client, "db_delete", db_id=db_id))["deleted"]
        assert (await call(client, "vm_delete", vm_id=created["vm"][0]))["deleted"]
        for sandbox_id in created["sandbox"]:
            await call(client, "sandbox_destroy", sandbox_id=sandbox_id)

    spent, held = balance(app)
    assert held == 0
    assert spent <= BUDGET and all(s + h <= BUDGET for s, h in samples), max(s + h for s, h in samples)
    with app.store.transaction() as session:
        ledger_total = session.scalar(select(func.sum(LedgerEntry.amount_micros)))
        task_costs = session.scalar(select(func.sum(Task.cost_micros)))
        lease_charges = session.scalar(
            select(func.sum(LedgerEntry.amount_micros)).where(LedgerEntry.idempotency_key.startswith("lease:"))
        )
        stopped = session.scalar(select(func.count()).select_from(Lease).where(Lease.end_reason == "budget"))
        sandbox_reasons = set(session.scalars(select(Sandbox.destroy_reason).where(Sandbox.task_id.is_(None))))
        assert session.scalar(select(func.count()).select_from(Database).where(Database.state != "deleted")) == 0
        assert session.scalar(select(func.count()).select_from(Vm).where(Vm.state != "deleted")) == 0
        over_held = session.scalars(select(Task.op).where(Task.hold_micros > 0, Task.cost_micros > Task.hold_micros))
        assert list(over_held) == [], "a task that held money was charged at most what it held"
    assert ledger_total == spent == (task_costs or 0) + (lease_charges or 0), (
        "the ledger is the tasks' and the leases' charges"
    )
    assert stopped == 6, "three sandboxes, two databases and the VM were stopped for money"
    assert sandbox_reasons == {"budget"}
    most = max(s + h for s, h in samples)
    print(f"\nbudget {BUDGET}, most ever spent and held {most}, spent {spent}, stopped for money {stopped}")
    assert not sandboxes_in_use(app)


async def test_a_dead_sandbox_is_marked_failed_and_billed_to_its_death(app: App) -> None:
    async with mcp_client(app) as client:
        sandbox = await call(client, "sandbox_create")
        sandbox_id = sandbox["sandbox_id"]
        with app.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            assert row is not None and row.container_id is not None
            container_id = row.container_id
        app.docker.client.containers.get(container_id).kill()

        def failed() -> bool:
            with app.store.transaction() as session:
                found = session.get(Sandbox, sandbox_id)
                return found is not None and found.state == "failed"

        await until(failed, "the reaper to mark the dead sandbox failed")
        assert (await call(client, "sandbox_list"))["sandboxes"] == []
        assert "has failed" in await call_error(client, "sandbox_exec", sandbox_id=sandbox_id, command="true")
        with app.store.transaction() as session:
            row = session.get(Sandbox, sandbox_id)
            lease = session.get(Lease, sandbox_id)
            assert row is not None and lease is not None and row.destroyed_at is not None
            assert lease.ended_at == lease.billed_until <= row.destroyed_at, "billing ended when it died"
            assert lease.held_micros == 0
        # Destroying it afterwards is fine and bills nothing more.
        assert (await call(client, "sandbox_destroy", sandbox_id=sandbox_id))["destroyed"] is False
