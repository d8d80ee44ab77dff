"""Quickstart: an agent's first session with cloudskills, over stdio with the official MCP client.

    .venv/bin/python examples/quickstart.py

It starts the server itself (`cloudskills serve`), so run `scripts/serve` once
first to install everything (or point SERVER at a running one over HTTP:
SERVER=http://127.0.0.1:8000/mcp).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent


def server() -> str | StdioServerParameters:
    url = os.environ.get("SERVER")
    if url:
        return url
    return StdioServerParameters(
        command=str(ROOT / ".venv" / "bin" / "cloudskills"), args=["serve"], env=dict(os.environ)
    )


async def main() -> None:
    async with Client(server()) as client:
        guide = await client.read_resource("skill://sandbox/SKILL.md")
        print("guide:", next(line for line in guide.contents[0].text.splitlines() if line.startswith("# ")))  # type: ignore[union-attr]

        one_shot = await client.call_tool("sandbox_run", {"code": "print(6*7)"})
        print("sandbox_run:", one_shot.structured_content)

        created = await client.call_tool("sandbox_create", {})
        assert created.structured_content is not None
        sandbox_id = created.structured_content["sandbox_id"]
        await client.call_tool(
            "sandbox_write_file", {"sandbox_id": sandbox_id, "path": "data.csv", "content": "x\n1\n2\n3\n"}
        )
        ran = await client.call_tool(
            "sandbox_run_code",
            {
                "sandbox_id": sandbox_id,
                "code": "print(sum(int(l) for l in open('data.csv').read().split()[1:]))",
            },
        )
        print("sum of data.csv:", ran.structured_content["stdout"].strip())  # type: ignore[index]
        await client.call_tool("sandbox_destroy", {"sandbox_id": sandbox_id})

        usage = await client.call_tool("billing_usage", {})
        print("spent so far:", usage.structured_content["total"]["amount"])  # type: ignore[index]


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(130)
