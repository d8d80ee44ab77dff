"""Confirmations for destructive ops (vm_delete, db_delete, db_restore): the client is asked
before anything is destroyed.

On 2026-07-28 the question rides the multi-round-trip flow: the call answers
``input_required`` with an elicitation, and the client calls again carrying the
answer. On 2025-11-25 the server sends the elicitation mid-call. A client that
cannot answer elicitations gets an error naming the setting for unattended
agents, ``auto_confirm``, and nothing is destroyed.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver.context import Context
from mcp_types import CallToolResult, ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field

from runtime.mcp_tasks import tool_error

CONFIRM_KEY = "confirm"
MODERN = "2026-07-28"


class Confirmation(BaseModel):
    confirm: bool = Field(description="true to go ahead; anything else stops it.")


def question(tool: str, arguments: dict[str, Any]) -> str:
    target = ", ".join(f"{k}={v}" for k, v in arguments.items() if k.endswith("_id") or k in ("namespace", "channel"))
    return f"{tool} ({target}) destroys data for good. Go ahead?"


def refused(tool: str) -> CallToolResult:
    return tool_error(f"{tool} was not confirmed, so nothing was changed: call it again and confirm it.")


def cannot_ask(tool: str) -> CallToolResult:
    return tool_error(
        f"{tool} destroys data and needs a confirmation, but this client cannot answer one (it does not "
        "support elicitation). For unattended agents, start the server with auto_confirm = true "
        "(CLOUDSKILLS_AUTO_CONFIRM=true), then call again."
    )


async def confirm(
    context: Context[Any, Any], tool: str, arguments: dict[str, Any]
) -> CallToolResult | InputRequiredResult | None:
    """None when the client confirmed; otherwise what to answer instead (the question, or a refusal)."""
    request = context.request_context
    capabilities = request.session.client_capabilities
    can_elicit = bool(capabilities and capabilities.elicitation is not None)
    if is_version_at_least(request.protocol_version, MODERN):
        answer = (context.input_responses or {}).get(CONFIRM_KEY)
        if isinstance(answer, ElicitResult):
            accepted = answer.action == "accept" and (answer.content or {}).get("confirm") is True
            return None if accepted else refused(tool)
        if not can_elicit:
            return cannot_ask(tool)
        ask = ElicitRequest(
            params=ElicitRequestFormParams(
                message=question(tool, arguments), requested_schema=Confirmation.model_json_schema()
            )
        )
        return InputRequiredResult(input_requests={CONFIRM_KEY: ask}, request_state="confirm")
    if not can_elicit:
        return cannot_ask(tool)
    result = await context.elicit(question(tool, arguments), Confirmation)
    accepted = result.action == "accept" and bool(getattr(result.data, "confirm", False))
    return None if accepted else refused(tool)
