"""A planner and two workers: they coordinate over a channel, share files in a workspace and
remember in memory, each an agent of its own (its own key) on one real server over HTTP.

    .venv/bin/python examples/multi_agent.py

It starts `cloudskills serve --http` itself and makes a key per agent with
`cloudskills keys create --agent ...` (run `scripts/serve` once first to install everything).
The planner writes the plan into the tenant's `shared` memory and sends one job per number;
each worker reads the plan, squares its numbers (worker-b in a sandbox that mounts the
workspace), writes the result into the workspace, acks the job and says it is done.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitResult

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "cloudskills")
NUMBERS = range(1, 7)


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([CLI, "serve", "--http", "--port", str(port)], stderr=subprocess.DEVNULL)
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:  # until it listens
        if server.poll() is not None:
            sys.exit("the server did not start: run scripts/serve once to install everything")
        time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}/mcp"


def agent(url: str, name: str, **options: Any) -> Client:
    """An MCP client that acts as agent `name` of the tenant `local`: its own key says so."""
    key = subprocess.run([CLI, "keys", "create", "--tenant", "local", "--agent", name], capture_output=True, text=True)
    headers = {"Authorization": f"Bearer {key.stdout.strip()}"}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=120)), **options)


async def confirm(context: object, params: object) -> ElicitResult:
    """workspace_delete asks before it destroys anything; a person would be shown the question."""
    return ElicitResult(action="accept", content={"confirm": True})


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content[0].text}")  # type: ignore[union-attr]
    return result.structured_content or {}


async def worker(url: str, name: str) -> None:
    async with agent(url, name) as me:
        plan = await call(me, "memory_get", namespace="shared", key="plan")
        ws = plan["metadata"]["workspace_id"]
        while jobs := (await call(me, "channel_receive", channel="jobs", wait_s=3, lease_s=60))["messages"]:
            n = jobs[0]["body"]["n"]
            if name == "worker-b":  # in a sandbox, writing straight into the mounted workspace
                mount = {"workspace_id": ws, "path": "/mnt/shared"}
                command = f"mkdir -p /mnt/shared/results && echo $(({n} * {n})) > /mnt/shared/results/{n}.txt"
                await call(me, "sandbox_run", command=command, workspaces=[mount])
            else:  # or with no sandbox at all
                await call(me, "workspace_write_file", workspace_id=ws, path=f"results/{n}.txt", content=f"{n * n}\n")
            await call(me, "memory_put", text=f"I squared {n}")  # in this agent's own namespace
            await call(me, "channel_ack", channel="jobs", receipts=[jobs[0]["receipt"]])
            await call(me, "channel_send", channel="done", body={"n": n})


async def main() -> None:
    server, url = start_server()
    try:
        async with agent(url, "planner", elicitation_callback=confirm) as planner, anyio.create_task_group() as workers:
            ws = (await call(planner, "workspace_create", name="squares", size_mib=32))["workspace_id"]
            plan = "square each number of the jobs channel; write results/<n>.txt in the workspace"
            await call(planner, "memory_put", namespace="shared", key="plan", text=plan, metadata={"workspace_id": ws})
            for n in NUMBERS:
                await call(planner, "channel_send", channel="jobs", body={"n": n}, dedupe_key=f"square-{n}")
            for name in ("worker-a", "worker-b"):
                workers.start_soon(worker, url, name)
            done = []
            while len(done) < len(NUMBERS):
                got = (await call(planner, "channel_receive", channel="done", max_messages=10, wait_s=30))["messages"]
                done += [(m["body"]["n"], m["sender_agent"]) for m in got]
                if got:
                    await call(planner, "channel_ack", channel="done", receipts=[m["receipt"] for m in got])
            for n, by in sorted(done):
                square = await call(planner, "workspace_read_file", workspace_id=ws, path=f"results/{n}.txt")
                print(f"{n} squared is {square['content'].strip()} (by {by})")
            for name in ("worker-a", "worker-b"):  # each worker's own namespace, named after it
                recalled = await call(
                    planner, "memory_search", namespace=name, query="which numbers did I square", top_k=10
                )
                print(f"{name} remembers:", sorted(hit["text"] for hit in recalled["hits"]))
            await call(planner, "workspace_delete", workspace_id=ws)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"jobs": len(done), "agents": sorted({by for _, by in done})}))


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(130)
