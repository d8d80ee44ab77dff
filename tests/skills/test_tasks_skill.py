"""tasks_list, tasks_get and tasks_cancel on real sandbox tasks."""

from __future__ import annotations

import anyio
import pytest

from runtime.app import App
from tests.conftest import sandboxes_in_use
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_list_and_get_show_state_cost_and_result(app: App) -> None:
    async with mcp_client(app) as client:
        ran = await call(client, "sandbox_run", code="print(7)")
        failed = await call_error(client, "sandbox_run", code="import time; time.sleep(5)", timeout_s=0.5)
        listed = await call(client, "tasks_list")
        got = await call(client, "tasks_get", task_id=ran["task_id"])
        only_failed = await call(client, "tasks_list", state="timed_out")
        missing = await call_error(client, "tasks_get", task_id="t_nope")
    assert "timeout_s" in failed
    assert [t["tool"] for t in listed["tasks"]] == ["sandbox_run", "sandbox_run"]
    assert got["state"] == "succeeded" and got["result"]["stdout"] == "7\n"
    assert got["cost"] == ran["cost"]
    assert [t["state"] for t in only_failed["tasks"]] == ["timed_out"]
    assert only_failed["tasks"][0]["error"]["code"] == "timed_out"
    assert "no task 't_nope'" in missing


async def test_cancel_stops_a_running_sandbox_and_bills_what_ran(app: App) -> None:
    async with mcp_client(app) as runner, mcp_client(app) as canceller:
        outcome: dict[str, object] = {}

        async def long_run() -> None:
            result = await runner.call_tool("sandbox_run", {"code": "import time; time.sleep(120)", "timeout_s": 300})
            outcome["text"] = result.content[0].text  # type: ignore[union-attr]

        async with anyio.create_task_group() as group:
            group.start_soon(long_run)
            await until(lambda: sandboxes_in_use(app), "the sandbox to start")
            with anyio.fail_after(30):
                running = (await call(canceller, "tasks_list", state="running"))["tasks"]
                cancelled = await call(canceller, "tasks_cancel", task_id=running[0]["task_id"])
        again = await call(canceller, "tasks_cancel", task_id=running[0]["task_id"])
        balance = await call(canceller, "billing_balance")
    assert cancelled["state"] == "cancelled" and again["state"] == "cancelled"
    assert cancelled["cost"]["micros"] > 0
    assert "cancelled" in str(outcome["text"])
    await until(lambda: not sandboxes_in_use(app), "the cancelled task's sandbox to go")
    assert balance["held"]["micros"] == 0
