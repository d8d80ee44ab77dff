"""A tenant's agents are named on keys and stdio servers; tasks, leases and ledger entries
record them, and billing_usage groups by them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from sqlalchemy import select

from common.errors import InvalidInput
from runtime.app import App
from runtime.bearer import AGENT_CLAIM, KeyVerifier, verified_caller
from runtime.settings import Settings, load_settings
from runtime.tenants import caller_of_key, create_key, create_tenant, tenant_of_key
from scheduler.models import LedgerEntry, Task
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio]


@pytest.fixture
async def plain_app(settings: Settings) -> AsyncIterator[App]:
    """A server with no warm pool: the ops these tests call need no Docker."""
    application = App(load_settings(pool_size=0, reap_interval_s=0.2))
    async with application.running():
        yield application
    application.close()


async def test_a_key_names_its_agent_and_bad_names_are_refused(plain_app: App) -> None:
    create_tenant(plain_app.store, "acme")
    planner = create_key(plain_app.store, "acme", "planner")
    plain = create_key(plain_app.store, "acme")
    assert (caller_of_key(plain_app.store, planner.key).agent, tenant_of_key(plain_app.store, planner.key)) == (  # type: ignore[union-attr]
        "planner",
        "acme",
    )
    assert caller_of_key(plain_app.store, plain.key).agent is None  # type: ignore[union-attr]
    token = await KeyVerifier(plain_app).verify_token(planner.key)
    assert token is not None and token.client_id == "acme" and (token.claims or {})[AGENT_CLAIM] == "planner"
    # What the middleware verified is what a /v1 route reads from the request's scope.
    assert verified_caller({"user": AuthenticatedUser(token)}) == caller_of_key(plain_app.store, planner.key)
    assert verified_caller({}) is None
    for bad in ("shared", "Planner", "two words", "x" * 65, "-lead"):
        with pytest.raises(InvalidInput, match="cannot name an agent"):
            create_key(plain_app.store, "acme", bad)


async def test_tasks_and_charges_record_their_agent_and_usage_groups_by_it(plain_app: App) -> None:
    async with mcp_client(plain_app, agent="planner") as planner, mcp_client(plain_app, agent="coder") as coder:
        mine = await call(planner, "billing_balance")
        theirs = await call(coder, "tasks_list")
        for _ in range(2):
            await call(coder, "inference_models")
        async with mcp_client(plain_app) as unnamed:
            await call(unnamed, "inference_models")
        usage = await call(planner, "billing_usage", group_by=["agent", "op"])
    with plain_app.store.transaction() as session:
        agents = dict(session.execute(select(Task.op, Task.agent).where(Task.op.in_(["balance", "list"]))).all())
        charged = {(e.agent, e.op) for e in session.scalars(select(LedgerEntry))}
    assert mine and theirs and agents == {"balance": "planner", "list": "coder"}
    assert {("coder", "models"), ("planner", "balance"), (None, "models")} <= charged
    rows = {(r["agent"], r["op"]): r["entries"] for r in usage["rows"]}
    assert rows[("coder", "models")] == 2 and rows[(None, "models")] == 1
    assert all(r["skill"] is None for r in usage["rows"]), "only the dimensions asked for are keyed"
