"""A model's reply streamed as it is written, then a database, over stdio with the official client.

    .venv/bin/python examples/models_and_data.py

The reply's text arrives as MCP progress notifications while the model works;
the final result carries the usage and the exact cost. The words are whatever
the small default model says (they can differ from one CPU to another): they
are shown as they came, not judged. Then a SQLite database is made, the reply
written into it with bound parameters, read back, and the database deleted.
Like the quickstart, it starts the server itself (run `scripts/serve` once first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult

ROOT = Path(__file__).resolve().parent.parent


def server() -> StdioServerParameters:
    return StdioServerParameters(
        command=str(ROOT / ".venv" / "bin" / "cloudskills"), args=["serve"], env=dict(os.environ)
    )


async def confirm(context: object, params: object) -> ElicitResult:
    """db_delete asks before it destroys anything; a person would be shown the question."""
    print("server asks:", getattr(params, "message", ""))
    return ElicitResult(action="accept", content={"confirm": True})


async def main() -> None:
    async with Client(server(), elicitation_callback=confirm) as client:

        async def show(progress: float, total: float | None, message: str | None) -> None:
            print(message or "", end="", flush=True)

        print("model: ", end="")
        reply = await client.call_tool(
            "inference_generate",
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
                "max_tokens": 32,
                "temperature": 0,
            },
            progress_callback=show,
        )
        result = reply.structured_content or {}
        print(f"\nusage: {result['usage']}, cost: {result['cost']['amount']}")

        db = (await client.call_tool("db_create", {"name": "notes"})).structured_content or {}
        await client.call_tool("db_query", {"db_id": db["db_id"], "sql": "CREATE TABLE notes (body TEXT)"})
        await client.call_tool(
            "db_query", {"db_id": db["db_id"], "sql": "INSERT INTO notes VALUES (?)", "params": [result["text"]]}
        )
        rows = await client.call_tool("db_query", {"db_id": db["db_id"], "sql": "SELECT body FROM notes"})
        print("stored:", (rows.structured_content or {})["rows"])
        deleted = await client.call_tool("db_delete", {"db_id": db["db_id"]})
        print("deleted:", (deleted.structured_content or {})["deleted"])


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(130)
