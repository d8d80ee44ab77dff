"""The tasks extension's wire (SEP-2663, final) through the SDK's in-memory client: task
handles only on 2026-07-28 for a client that declares the extension, in the final shape;
status-discriminated tasks/get; errors for unknown tasks and for clients that did not
declare it. (Real servers, cancellation and restarts: tests/e2e/test_mcp_tasks.py.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolResult,
)

from runtime.app import App
from runtime.server import CloudSkillsServer
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from scheduler.models import Task
from tests.mcp_helpers import (
    CreatedTask,
    PollingTasks,
    call,
    cancel_task,
    get_task,
    until_done,
    update_task,
)

pytestmark = pytest.mark.anyio
MODERN = "2026-07-28"
TASK_FIELDS = {"taskId", "status", "statusMessage", "createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"}


@pytest.fixture
async def offline_app(settings: Settings) -> AsyncIterator[App]:
    # SQLite databases need no engine: db_backup is an op that can run long, done in a moment.
    app = App(settings, DockerDriver("unix:///nonexistent/docker.sock"))
    async with app.running(serving=False):
        yield app
    app.close()


def handing_over(app: App) -> CloudSkillsServer:
    """A server that hands over every long call at once, instead of after 2 s."""
    server = CloudSkillsServer(app, "local")
    server.tasks.window_s = 0.0
    return server


async def backup(client: Client, db_id: str) -> Any:
    return await client.session.call_tool("db_backup", {"db_id": db_id}, allow_claimed=True)


async def test_a_declaring_2026_client_gets_a_handle_in_the_final_shape(offline_app: App) -> None:
    async with Client(handing_over(offline_app), mode=MODERN, extensions=[PollingTasks()]) as client:
        db = (await call(client, "db_create"))["db_id"]
        created = await backup(client, db)
        assert isinstance(created, CreatedTask)
        wire = created.model_dump(by_alias=True, exclude_unset=True)
        assert set(wire) == TASK_FIELDS | {"resultType", "_meta"} and wire["resultType"] == "task"
        assert created.ttl_ms is None and created.poll_interval_ms == 500 and created.status == "working"
        assert created.task_id.startswith("t_")

        done = await until_done(client, created.task_id)
        assert done.status == "completed" and done.result_type == "complete" and done.error is None
        assert done.result is not None and done.result["resultType"] == "complete"
        result = CallToolResult.model_validate(done.result)
        assert not result.is_error and (result.structured_content or {})["task_id"] == created.task_id
        assert done.status_message == "db_backup succeeded"

        # Acknowledged: our tasks never wait on input, so nothing is outstanding.
        await update_task(client, created.task_id, {"never-asked": {"action": "accept"}})
        await cancel_task(client, created.task_id)  # a finished task stays as it was
        assert (await get_task(client, created.task_id)).status == "completed"

        # The SDK's own call_tool, with the extension's resolver, hides the polling.
        resolved = await client.call_tool("db_backup", {"db_id": db})
        assert not resolved.is_error and (resolved.structured_content or {})["db_id"] == db


async def test_a_tool_that_ran_and_failed_is_a_completed_task_with_is_error(offline_app: App) -> None:
    async with Client(handing_over(offline_app), mode=MODERN, extensions=[PollingTasks()]) as client:
        db = await call(client, "db_create")
        # Its file lost behind the server's back: the backup starts, then fails.
        os.unlink(db["connection_string"].removeprefix("sqlite:///"))
        created = await backup(client, db["db_id"])
        assert isinstance(created, CreatedTask)
        done = await until_done(client, created.task_id)
        assert done.status == "completed" and done.result is not None and done.result["isError"] is True
        assert "is gone: delete it with db_delete" in done.result["content"][0]["text"]


async def test_a_finished_task_whose_answer_was_not_kept_is_failed_with_a_json_rpc_error(offline_app: App) -> None:
    async with Client(handing_over(offline_app), mode=MODERN, extensions=[PollingTasks()]) as client:
        db = (await call(client, "db_create"))["db_id"]
        created = await backup(client, db)
        assert isinstance(created, CreatedTask)
        await until_done(client, created.task_id)
        with offline_app.store.transaction() as session:
            row = session.get(Task, created.task_id)
            assert row is not None
            row.result = None
        failed = await get_task(client, created.task_id)
        assert failed.status == "failed" and failed.result is None and failed.error is not None
        assert failed.error["code"] == INTERNAL_ERROR and "call db_backup again" in failed.error["message"]


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_no_handle_for_a_legacy_connection_or_a_client_that_did_not_declare(offline_app: App, mode: str) -> None:
    declares = mode == "legacy"  # on legacy it declares and still gets none; on 2026 it does not declare
    extensions = [PollingTasks()] if declares else []
    async with Client(handing_over(offline_app), mode=mode, extensions=extensions) as client:
        db = (await call(client, "db_create"))["db_id"]
        answer = await backup(client, db)
        assert isinstance(answer, CallToolResult) and not answer.is_error
        task_id = (answer.structured_content or {})["task_id"]
        with pytest.raises(MCPError) as refused:
            await get_task(client, task_id)
    # tasks/* are not served on 2025-11-25; on 2026-07-28 they need the extension declared.
    assert refused.value.code == (METHOD_NOT_FOUND if mode == "legacy" else MISSING_REQUIRED_CLIENT_CAPABILITY)


async def test_an_unknown_task_is_invalid_params(offline_app: App) -> None:
    async with Client(handing_over(offline_app), mode=MODERN, extensions=[PollingTasks()]) as client:
        for ask in (get_task, cancel_task, lambda c, t: update_task(c, t, {})):
            with pytest.raises(MCPError) as refused:
                await ask(client, "t_ffffffffffffffff")
            assert refused.value.code == INVALID_PARAMS and "no task 't_ffffffffffffffff'" in refused.value.message
