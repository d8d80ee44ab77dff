"""Calling tools through the MCP SDK's in-memory client, as an agent would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client

from runtime.app import App
from runtime.server import CloudSkillsServer


class ToolFailed(AssertionError):
    pass


@asynccontextmanager
async def mcp_client(app: App, tenant: str | None = None) -> AsyncIterator[Client]:
    async with Client(CloudSkillsServer(app, tenant or app.settings.tenant)) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """The structured result; a tool error fails the test with its message."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise ToolFailed(result.content[0].text)  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """The error message of a call that must fail as a tool error."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed but returned {result.structured_content}"
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return text
