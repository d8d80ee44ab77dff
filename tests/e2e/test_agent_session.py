"""An agent's session end to end, over stdio and over Streamable HTTP, with the official client.

create a sandbox → write a file → run code that reads it → destroy it; then
no container of this server is left, and the ledger holds the charges.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from sqlalchemy import func, select

from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from scheduler.models import LedgerEntry, Task
from skills.sandbox.pool import LABEL_POOL
from tests.e2e.conftest import Served, server_env, store_of
from tests.mcp_helpers import call, http_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def agent_session(client: Client) -> dict[str, object]:
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert {"sandbox_create", "sandbox_write_file", "sandbox_run_code", "sandbox_destroy"} <= tools
    sid = (await call(client, "sandbox_create"))["sandbox_id"]
    await call(client, "sandbox_write_file", sandbox_id=sid, path="data.csv", content="a,b\n1,2\n3,4\n")
    ran = await call(
        client,
        "sandbox_run_code",
        sandbox_id=sid,
        code="import csv\nrows = csv.DictReader(open('data.csv'))\nprint(sum(int(r['b']) for r in rows))",
    )
    destroyed = await call(client, "sandbox_destroy", sandbox_id=sid)
    one_shot = await call(client, "sandbox_run", code="print(1)")
    return {"stdout": ran["stdout"], "destroyed": destroyed["destroyed"], "one_shot": one_shot["stdout"]}


async def assert_clean_and_billed(home: Path, docker_driver: DockerDriver) -> None:
    store = store_of(home)
    try:
        # Containers are removed off the callers' path; warm ones wait in the pool, unowned.
        def sandboxes_left() -> list[object]:
            found = docker_driver.list_labelled({LABEL_STORE: store.store_id})
            return [c for c in found if LABEL_POOL not in c.labels]

        await until(lambda: not sandboxes_left(), "no sandbox left")
        with store.transaction() as session:
            states = dict(session.execute(select(Task.op, Task.state)).all())
            total = session.scalar(select(func.sum(LedgerEntry.amount_micros)))
            ops = set(session.scalars(select(LedgerEntry.op)))
            task_costs = session.scalar(select(func.sum(Task.cost_micros)))
            lifetime = session.scalar(select(func.sum(LedgerEntry.amount_micros)).where(LedgerEntry.op == "lifetime"))
    finally:
        store.close()
    assert set(states.values()) == {"succeeded"}
    assert {"create", "write_file", "run_code", "destroy", "run", "lifetime"} <= ops
    assert total and total > 0
    assert total == (task_costs or 0) + (lifetime or 0)  # every micro-unit is a task's cost or a sandbox's lifetime


async def test_over_stdio(tmp_path: Path, docker_driver: DockerDriver) -> None:
    home = tmp_path / "home"
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=server_env(home))
    async with Client(params) as client:
        result = await agent_session(client)
    assert result == {"stdout": "6\n", "destroyed": True, "one_shot": "1\n"}
    await assert_clean_and_billed(home, docker_driver)
    store = store_of(home)
    # Removed as the server stops; what the engine was still making then, by the janitor it left.
    labelled = {LABEL_STORE: store.store_id}
    store.close()
    await until(lambda: not docker_driver.list_labelled(labelled), "the stopped server's warm pool to be removed", 90)


async def test_over_streamable_http(http_server: Served, docker_driver: DockerDriver) -> None:
    async with http_client(http_server.url, http_server.key) as client:
        result = await agent_session(client)
    assert result == {"stdout": "6\n", "destroyed": True, "one_shot": "1\n"}
    await assert_clean_and_billed(http_server.home, docker_driver)
