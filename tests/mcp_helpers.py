"""Calling tools through the MCP SDK's in-memory client, as an agent would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runtime.app import App
from runtime.server import CloudSkillsServer


class ToolFailed(AssertionError):
    pass


@asynccontextmanager
async def mcp_client(app: App, tenant: str | None = None) -> AsyncIterator[Client]:
    async with Client(CloudSkillsServer(app, tenant or app.settings.tenant)) as client:
        yield client


def http_client(url: str, key: str | None) -> Client:
    """An MCP client over Streamable HTTP that sends ``key`` as its bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=300)))


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
