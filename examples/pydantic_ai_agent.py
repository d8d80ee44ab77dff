"""A pydantic-ai agent whose tools are cloudskills' skills, over MCP.

    .venv/bin/python examples/pydantic_ai_agent.py            # a scripted model: runs offline
    MODEL=openai:gpt-5 .venv/bin/python examples/pydantic_ai_agent.py   # a real one

The server is started over stdio (run `scripts/serve` once first: it installs
everything). With no MODEL the agent's model is scripted: it asks for one
sandbox_run and reports what the sandbox printed, so the example needs no LLM.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

ROOT = Path(__file__).resolve().parent.parent


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [part for part in messages[-1].parts if isinstance(part, ToolReturnPart)]
    if not returns:
        code = "import statistics; print(statistics.mean([3, 5, 10]))"
        return ModelResponse(parts=[ToolCallPart("sandbox_run", {"code": code})])
    content: Any = returns[0].content
    stdout = content["stdout"] if isinstance(content, dict) else str(content)
    return ModelResponse(parts=[TextPart(f"The mean is {stdout.strip()}.")])


async def main() -> None:
    server = {
        "mcpServers": {
            "cloudskills": {
                "command": sys.executable,
                "args": ["-m", "runtime", "serve"],
                "cwd": str(ROOT),
                "env": dict(os.environ),
            }
        }
    }
    model = os.environ.get("MODEL") or FunctionModel(scripted)
    # A fresh server builds its catalog and store first: give its handshake a minute on a busy machine.
    agent = Agent(model, toolsets=[MCPToolset(server, init_timeout=60)])
    async with agent:
        result = await agent.run("What is the mean of 3, 5 and 10? Compute it in a sandbox.")
    print(result.output)


if __name__ == "__main__":
    anyio.run(main)
