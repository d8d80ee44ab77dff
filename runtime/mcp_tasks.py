"""MCP tasks (the extension ``io.modelcontextprotocol/tasks``, SEP-2663) on the scheduler's store.

A client that declares the extension on a ``tools/call`` of an op that can
run long (``Op.runs_long``: a VM boot, a database backup, a model's reply, a
sandbox run...) gets the ordinary answer if the call is done within a couple
of seconds, and otherwise a task handle (``resultType: "task"``) instead of
waiting. The handle is
the scheduler's own task id, so it is as durable as the task: ``tasks/get``
answers from the store, after a restart too, with the result or the error
inline once the task is done; ``tasks/cancel`` cancels the scheduler task (its
container or VM is stopped, its hold released). Clients without the extension
get the ordinary synchronous path, and any client can use the ``tasks_list``,
``tasks_get`` and ``tasks_cancel`` tools.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolRequestParams, CallToolResult, RequestParams, TextContent
from pydantic import Field

from common.errors import CloudSkillsError, NotFound
from runtime.app import App
from scheduler.models import Task
from scheduler.tasks import outcome_of

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
POLL_INTERVAL_MS = 500
# A long-running op still answers directly if it is done this soon; past it, a task handle.
SYNC_WINDOW_S = 2.0
STATUS = {
    "queued": "working",
    "running": "working",
    "succeeded": "completed",
    "failed": "completed",  # a tool that ran and failed is a completed call with isError
    "timed_out": "completed",
    "cancelled": "cancelled",
}


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId")
    request_state: str | None = Field(default=None, alias="requestState")


class UpdateTaskParams(TaskParams):
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def declared(params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the client declared the extension: on this request's ``_meta`` or its session."""
    meta: dict[str, Any] = dict(params.meta or {})
    envelope: dict[str, Any] = meta.get(CLIENT_CAPABILITIES) or {}
    if TASKS_EXTENSION in (envelope.get("extensions") or {}):
        return True
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def tool_result(data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))], structured_content=data
    )


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def wire(result: CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


class TasksExtension(Extension):
    identifier = TASKS_EXTENSION

    def __init__(self, app: App, tenant_of: Callable[[], str]) -> None:
        self.app = app
        self.tenant_of = tenant_of

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", TaskParams, self.get),
            MethodBinding("tasks/update", UpdateTaskParams, self.update),
            MethodBinding("tasks/cancel", TaskParams, self.cancel),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        found = self.app.registry.find(params.name)
        # An op that asks for confirmation asks on the ordinary path first (the
        # question needs the call's own round trips), so it never becomes a task.
        asks = found is not None and found[1].confirm and not self.app.settings.auto_confirm
        if not declared(params, ctx) or found is None or asks:
            return await call_next(ctx)
        try:
            answer = await self.app.call_or_hand_over(
                self.tenant_of(), params.name, dict(params.arguments or {}), SYNC_WINDOW_S
            )
        except CloudSkillsError as exc:
            return tool_error(exc.message)
        if answer is None:
            return await call_next(ctx)
        if not isinstance(answer, str):  # done within the window: the ordinary answer
            return tool_result(answer.unwrap())
        # The task row was written before the window opened: a tasks/get for it resolves now.
        return {"resultType": "task", **self.view(self._task(answer), detailed=False)}

    def _task(self, task_id: str, tenant_id: str | None = None) -> Task:
        try:
            return self.app.scheduler.get(tenant_id or self.tenant_of(), task_id)
        except NotFound as exc:
            raise MCPError(code=INVALID_PARAMS, message=exc.message) from exc

    def view(self, task: Task, detailed: bool = True) -> dict[str, Any]:
        """The task as SEP-2663 shows it; ``detailed`` adds the result (or error) once it is done."""
        status = STATUS.get(task.state, "working")
        shown: dict[str, Any] = {
            "taskId": task.id,
            "status": status,
            "statusMessage": f"{task.skill}_{task.op} is {task.state.replace('_', ' ')}",
            "createdAt": iso(task.created_at),
            "lastUpdatedAt": iso(task.finished_at or task.started_at or task.created_at),
            "ttlSeconds": None,  # kept in the store for good
            "pollIntervalMilliseconds": POLL_INTERVAL_MS,
        }
        if detailed and status == "completed":
            outcome = outcome_of(task)
            try:
                result = tool_result(outcome.unwrap())
            except CloudSkillsError as exc:
                result = tool_error(exc.message)
            shown["result"] = wire(result)
        return shown

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        return self.view(self._task(params.task_id))

    async def update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> HandlerResult:
        # Our tasks never ask for input; the spec has the server acknowledge anyway.
        return {}

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        # Acknowledged whatever the id: another tenant's task is as unknown as a made-up one.
        with contextlib.suppress(CloudSkillsError):
            await self.app.scheduler.cancel(self.tenant_of(), params.task_id)
        return {}
