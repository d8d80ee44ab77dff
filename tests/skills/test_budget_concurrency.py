"""200 concurrent tasks against a budget that covers exactly K of them, on the real store,
through the MCP client, with real sandboxes for the ones admitted."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from runtime.app import App
from runtime.settings import Settings, load_settings
from runtime.tenants import update_tenant
from sandbox.docker import DockerDriver
from scheduler.models import LedgerEntry, Task, Tenant
from tests.conftest import sandboxes_in_use
from tests.mcp_helpers import mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

CALLS = 200
K = 8
FEE = 1000
# Sandbox time is free in this catalog, so a task's cost is exactly its hold (the
# fee): once K tasks ran, the budget is spent and no later call can be admitted.
CATALOG = f"""
version = "test-fee-only"
currency = "USD"
[task_fee]
default = 0
"sandbox.run" = {FEE}
[resources.sandbox]
vcpu_hour = 0
gib_hour = 0
"""


@pytest.fixture
def fee_only_settings(settings: Settings, tmp_path: Path) -> Settings:
    prices = tmp_path / "prices.toml"
    prices.write_text(CATALOG)
    return load_settings(prices_file=prices, workers=32)


async def test_at_most_k_admitted_and_the_ledger_is_exact(
    fee_only_settings: Settings, docker_driver: DockerDriver
) -> None:
    app = App(fee_only_settings, docker_driver)
    update_tenant(app.store, "local", budget_micros=K * FEE, max_concurrent_tasks=CALLS, tasks_per_minute=10 * CALLS)
    outcomes: list[str] = []
    lowest_left: list[int] = []

    def left() -> int:
        with app.store.transaction() as session:
            tenant = session.get(Tenant, "local")
            assert tenant is not None and tenant.budget_micros is not None
            return tenant.budget_micros - tenant.spent_micros - tenant.held_micros

    async def one_call(client: object) -> None:
        result = await client.call_tool("sandbox_run", {"code": "print(1)", "timeout_s": 5})  # type: ignore[attr-defined]
        outcomes.append("error: " + result.content[0].text if result.is_error else "ok")

    async def watch_balance(done: anyio.Event) -> None:
        while not done.is_set():
            lowest_left.append(left())
            await anyio.sleep(0.005)

    async with app.running(), mcp_client(app) as client:
        done = anyio.Event()
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_balance, done)
            async with anyio.create_task_group() as calls:
                for _ in range(CALLS):
                    calls.start_soon(one_call, client)
            done.set()

    ok = [o for o in outcomes if o == "ok"]
    refused = [o for o in outcomes if o != "ok"]
    assert len(ok) == K
    assert len(refused) == CALLS - K
    assert all("budget" in o and "is left" in o for o in refused), refused[:3]
    assert min(lowest_left) >= 0
    with app.store.transaction() as session:
        tenant = session.get(Tenant, "local")
        ledger_total = session.scalar(select(func.sum(LedgerEntry.amount_micros)))
        settled_costs = session.scalar(select(func.sum(Task.cost_micros)))
        admitted = session.scalar(select(func.count()).select_from(Task))
    assert tenant is not None
    assert admitted == K  # refused calls never became tasks
    assert ledger_total == settled_costs == tenant.spent_micros == K * FEE
    assert tenant.held_micros == 0
    assert not sandboxes_in_use(app)
    app.close()
