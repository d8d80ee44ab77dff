"""Clients no one here wrote, driving the real server: a pydantic-ai agent whose model is
scripted (FunctionModel) and whose tools come from our server over MCP, the official
Python client at both protocol versions, and the TypeScript SDK's client over stdio and HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from sandbox.docker import DockerDriver
from tests.e2e.conftest import Served
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A model that asks for one sandbox_run, then reports what the sandbox printed."""
    returns = [part for part in messages[-1].parts if isinstance(part, ToolReturnPart)]
    if not returns:
        assert "sandbox_run" in {tool.name for tool in info.function_tools}
        return ModelResponse(parts=[ToolCallPart("sandbox_run", {"code": "print(6 * 7)"})])
    content: Any = returns[0].content
    stdout = content["stdout"] if isinstance(content, dict) else str(content)
    return ModelResponse(parts=[TextPart(f"the sandbox printed {stdout.strip()}")])


async def test_a_pydantic_ai_agent_uses_our_tools(http_server: Served, docker_driver: DockerDriver) -> None:
    toolset = MCPToolset(http_server.url, headers={"Authorization": f"Bearer {http_server.key}"})
    agent = Agent(FunctionModel(scripted_model), toolsets=[toolset])
    async with agent:
        result = await agent.run("What is 6 times 7? Use a sandbox.")
    assert result.output == "the sandbox printed 42"
    async with http_client(http_server.url, http_server.key) as client:
        usage = await call(client, "billing_usage")
    assert any(row["op"] == "run" for row in usage["rows"])


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_the_python_client_at_both_protocol_versions(
    http_server: Served, docker_driver: DockerDriver, mode: str
) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {http_server.key}"}
    transport = streamable_http_client(http_server.url, http_client=httpx2.AsyncClient(headers=headers, timeout=60))
    async with Client(transport, mode=mode) as client:
        expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected
        out = await call(client, "sandbox_run", code="print('v', 1)")
        guide = await client.read_resource("skill://sandbox/SKILL.md")
    assert out["stdout"] == "v 1\n"
    assert "sandbox_run" in guide.contents[0].text  # type: ignore[union-attr]


TS_CLIENT = ROOT / "examples" / "typescript"  # the example is the client: it stays true to the code


def run_ts_client(*args: str) -> dict[str, Any]:
    if not (TS_CLIENT / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.fail(
            "the TypeScript SDK is not installed: scripts/test installs it (npm install in examples/typescript)"
        )
    done = subprocess.run(
        ["node", str(TS_CLIENT / "client.mjs"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def assert_ts_session(seen: dict[str, Any]) -> None:
    assert {"sandbox_run", "sandbox_create", "billing_usage"} <= set(seen["tools"])
    assert seen["stdout"] == "42\n"
    assert seen["badIsError"] and seen["badText"].startswith("invalid arguments: `code`")
    assert seen["guide"].startswith("---\nname: sandbox\n"), (
        "resources/read gives SKILL.md as it is, front matter first"
    )


def test_the_typescript_sdk_over_stdio(tmp_path: Path, docker_driver: DockerDriver) -> None:
    assert_ts_session(run_ts_client("stdio", sys.executable, str(tmp_path / "home")))


def test_the_typescript_sdk_over_http(http_server: Served, docker_driver: DockerDriver) -> None:
    assert_ts_session(run_ts_client("http", http_server.url, http_server.key))
