"""Calling tools through the MCP SDK's in-memory client, as an agent would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal

import anyio
import httpx2
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, EmptyResult, Request, RequestParams, Result
from pydantic import ConfigDict, Field

from runtime.app import App
from runtime.server import CloudSkillsServer


class ToolFailed(AssertionError):
    pass


@asynccontextmanager
async def mcp_client(
    app: App, tenant: str | None = None, agent: str | None = None, **options: Any
) -> AsyncIterator[Client]:
    """A client of a server acting for ``tenant`` (the settings' by default), as its ``agent``."""
    async with Client(CloudSkillsServer(app, tenant or app.settings.tenant, agent=agent), **options) as client:
        yield client


def http_client(url: str, key: str | None, **options: Any) -> Client:
    """An MCP client over Streamable HTTP that sends ``key`` as its bearer token
    (``options``: the client's ``mode``, ``extensions``...)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=300)), **options)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """The structured result; a tool error fails the test with its message."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise ToolFailed(result.content[0].text)  # type: ignore[union-attr]
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """The error message of a call that must fail as a tool error."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed but returned {result.structured_content}"
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return text


# -- MCP tasks (io.modelcontextprotocol/tasks, SEP-2663), as a 2026-07-28 client that declares it sees them --


class TaskHandle(Result):
    """A ``resultType: "task"`` answer to tools/call, or a tasks/get answer: the final SEP-2663
    task, its status deciding what else it carries (``result`` once completed, ``error`` once
    failed)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    result_type: Literal["task", "complete"] = Field(alias="resultType")
    task_id: str = Field(alias="taskId")
    status: Literal["working", "input_required", "completed", "failed", "cancelled"]
    status_message: str | None = Field(default=None, alias="statusMessage")
    created_at: str = Field(alias="createdAt")
    last_updated_at: str = Field(alias="lastUpdatedAt")
    ttl_ms: int | None = Field(alias="ttlMs")  # required, null for unlimited
    poll_interval_ms: int | None = Field(default=None, alias="pollIntervalMs")
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class CreatedTask(TaskHandle):
    result_type: Literal["task"] = Field(alias="resultType")


class TaskIdParams(RequestParams):
    task_id: str = Field(alias="taskId")


class UpdateParams(TaskIdParams):
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param: ClassVar[str | None] = "taskId"


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param: ClassVar[str | None] = "taskId"


class UpdateTask(Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: UpdateParams
    name_param: ClassVar[str | None] = "taskId"


async def get_task(client: Client, task_id: str) -> TaskHandle:
    return await client.session.send_request(GetTask(params=TaskIdParams(taskId=task_id)), TaskHandle)


async def cancel_task(client: Client, task_id: str) -> None:
    await client.session.send_request(CancelTask(params=TaskIdParams(taskId=task_id)), EmptyResult)


async def update_task(client: Client, task_id: str, responses: dict[str, Any]) -> None:
    await client.session.send_request(
        UpdateTask(params=UpdateParams(taskId=task_id, inputResponses=responses)), EmptyResult
    )


def done(task: TaskHandle) -> bool:
    return task.status in ("completed", "failed", "cancelled")


async def until_done(client: Client, task_id: str, timeout_s: float = 120) -> TaskHandle:
    with anyio.fail_after(timeout_s):
        while True:
            task = await get_task(client, task_id)
            if done(task):
                return task
            await anyio.sleep((task.poll_interval_ms or 200) / 1000)


async def resolve_by_polling(created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
    """What a client does with a task handle: poll until done, return the call's result."""
    request = GetTask(params=TaskIdParams(taskId=created.task_id))
    with anyio.fail_after(300):
        while True:
            task = await ctx.session.send_request(request, TaskHandle)
            if done(task):
                break
            await anyio.sleep((task.poll_interval_ms or 200) / 1000)
    if task.status == "completed" and task.result is not None:
        return CallToolResult.model_validate(task.result)
    reason = task.error["message"] if task.error else task.status_message
    raise ToolFailed(f"task {created.task_id} ended {task.status}: {reason}")


class PollingTasks(ClientExtension):
    """Declares io.modelcontextprotocol/tasks and finishes task handles by polling tasks/get."""

    identifier = "io.modelcontextprotocol/tasks"

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=resolve_by_polling)]
