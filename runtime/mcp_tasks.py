"""MCP tasks (the extension ``io.modelcontextprotocol/tasks``, SEP-2663) on the scheduler's store.

A client on a 2026-07-28 connection that declares the extension, on its
``tools/call`` of an op that can run long (``Op.runs_long``: a VM boot, a
database backup, a model's reply, a sandbox run...), gets the ordinary answer
if the call is done within a couple of seconds, and otherwise a task handle
(``resultType: "task"``) instead of waiting. A 2025-11-25 connection never gets
one, whatever it declares: that wire has no such shape, so it always gets the
ordinary synchronous answer, and the ``tasks/*`` methods are not served there.

The handle is the scheduler's own task id, so it is as durable as the task:
``tasks/get`` answers from the store, after a restart too, by status:
``working``; ``completed`` with the call's result inline, a tool that ran and
failed being a completed call with ``isError`` (exactly what the ordinary path
would have answered); ``cancelled``; and ``failed`` with a JSON-RPC error only
where no tool result can be given at all. ``tasks/cancel`` cancels the
scheduler task (its container or VM is stopped, its hold released);
``tasks/update`` is acknowledged, as our tasks never wait on input. Any client
can also use the ``tasks_list``, ``tasks_get`` and ``tasks_cancel`` tools.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolRequestParams, CallToolResult, RequestParams, TextContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from common.errors import CloudSkillsError, NotFound
from runtime.app import PREPARED, App, PreparedCall
from runtime.attachments import attachment_blocks, named_only
from scheduler.models import Task
from scheduler.tasks import outcome_of

log = logging.getLogger("cloudskills.tasks")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
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
SAID = {
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "ran past its deadline",
    "cancelled": "was cancelled",
}


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId")


class UpdateTaskParams(TaskParams):
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def declared(params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the client declared the extension: in this request's ``_meta`` envelope, or in
    the capabilities its connection was made with (on 2026-07-28, that same envelope)."""
    meta: dict[str, Any] = dict(params.meta or {})
    envelope: dict[str, Any] = meta.get(CLIENT_CAPABILITIES) or {}
    if TASKS_EXTENSION in (envelope.get("extensions") or {}):
        return True
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# The text block beside the structured result is the same JSON, but a string longer
# than TEXT_WHOLE_CHARS (a file's content, a long output) is shown by its start and
# size: the whole of it travels once, in structuredContent.
TEXT_WHOLE_CHARS = 64 * 1024
TEXT_PREVIEW_CHARS = 1024


def summary_text(data: dict[str, Any]) -> str:
    def cut(item: Any) -> Any:
        if isinstance(item, str) and len(item) > TEXT_WHOLE_CHARS:
            return f"{item[:TEXT_PREVIEW_CHARS]}… [{len(item)} characters in all: the whole is in structuredContent]"
        if isinstance(item, dict):
            return {key: cut(value) for key, value in item.items()}
        if isinstance(item, list):
            return [cut(value) for value in item]
        return item

    return json.dumps(cut(data), ensure_ascii=False)


def tool_result(data: dict[str, Any]) -> CallToolResult:
    """The answer: the text block, the files it carries as image or resource blocks, the structured result."""
    text = TextContent(type="text", text=summary_text(named_only(data)))
    return CallToolResult(content=[text, *attachment_blocks(data)], structured_content=data)


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def wire(result: CallToolResult) -> dict[str, Any]:
    """The result as the 2026-07-28 wire carries it (a task's result is that request's answer)."""
    return {"resultType": "complete", **result.model_dump(by_alias=True, mode="json", exclude_none=True)}


def view(task: Task, detailed: bool = True) -> dict[str, Any]:
    """The task as SEP-2663 shows it; ``detailed`` (tasks/get) adds what its status carries."""
    status = STATUS.get(task.state, "working")
    shown: dict[str, Any] = {
        "taskId": task.id,
        "status": status,
        "statusMessage": f"{task.skill}_{task.op} {SAID.get(task.state, f'is {task.state}')}",
        "createdAt": iso(task.created_at),
        "lastUpdatedAt": iso(task.finished_at or task.started_at or task.created_at),
        "ttlMs": None,  # kept in the store for good
        "pollIntervalMs": POLL_INTERVAL_MS,
    }
    if not detailed or status != "completed":
        return shown
    outcome = outcome_of(task)
    if outcome.error is not None:
        shown["result"] = wire(tool_error(outcome.error.message))
    elif outcome.result is not None:
        shown["result"] = wire(tool_result(outcome.result))
    else:
        # Finished, yet neither a result nor an error was kept: no tool answer can be given.
        shown["status"] = "failed"
        shown["error"] = {
            "code": INTERNAL_ERROR,
            "message": f"task {task.id} finished but its result was not kept; call {task.skill}_{task.op} again.",
        }
    return shown


class TasksExtension(Extension):
    identifier = TASKS_EXTENSION

    def __init__(
        self,
        app: App,
        tenant_of: Callable[[], str],
        agent_of: Callable[[], str | None] = lambda: None,
        window_s: float = SYNC_WINDOW_S,
    ) -> None:
        self.app = app
        self.tenant_of = tenant_of
        self.agent_of = agent_of
        self.window_s = window_s

    def methods(self) -> list[MethodBinding]:
        # 2025-11-25 has a tasks/get of its own (SEP-1686) with other shapes: not ours to answer.
        return [
            MethodBinding("tasks/get", TaskParams, self.get, protocol_versions=MODERN),
            MethodBinding("tasks/update", UpdateTaskParams, self.update, protocol_versions=MODERN),
            MethodBinding("tasks/cancel", TaskParams, self.cancel, protocol_versions=MODERN),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.protocol_version not in MODERN or not declared(params, ctx):
            return await call_next(ctx)
        found = self.app.registry.find(params.name)
        # An op that asks for confirmation asks on the ordinary path first (the
        # question needs the call's own round trips), so it never becomes a task.
        if found is None or (found[1].confirm and not self.app.settings.auto_confirm):
            return await call_next(ctx)
        try:
            answer = await self.app.call_or_hand_over(
                self.tenant_of(), params.name, dict(params.arguments or {}), self.window_s, self.agent_of()
            )
        except CloudSkillsError as exc:
            return tool_error(exc.message)
        if isinstance(answer, PreparedCall):  # not a long call: the ordinary path, validated already
            token = PREPARED.set(answer)
            try:
                return await call_next(ctx)
            finally:
                PREPARED.reset(token)
        if not isinstance(answer, str):  # done within the window: the ordinary answer
            return tool_result(answer.unwrap())
        # The task row was written before the window opened: a tasks/get for it resolves now.
        log.info("%s goes on as task %s: its handle went to the client", params.name, answer)
        return {"resultType": "task", **view(self._task(answer), detailed=False)}

    def _task(self, task_id: str) -> Task:
        try:
            return self.app.scheduler.get(self.tenant_of(), task_id)
        except NotFound as exc:  # another tenant's task is as unknown as a made-up id
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to retrieve task: {exc.message}") from exc

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        return view(self._task(params.task_id))

    async def update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        self._task(params.task_id)
        # Our tasks never ask for input, so no response can be outstanding: ignored, as the spec asks.
        return {}

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        self._task(params.task_id)
        try:
            await self.app.scheduler.cancel(self.tenant_of(), params.task_id)
        except NotFound as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to cancel task: {exc.message}") from exc
        return {}
