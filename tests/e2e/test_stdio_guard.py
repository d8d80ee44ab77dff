"""Over stdio, a line that is no JSON-RPC message gets an answer, as it does over HTTP,
and the server goes on serving: a client is never left waiting for a reply that never comes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.e2e.conftest import server_env

pytestmark = [pytest.mark.anyio]

DEPTH = 10_000
DEEP = '{"jsonrpc":"2.0","id":2,"method":"ping","params":' + '{"a":' * DEPTH + "1" + "}" * DEPTH + "}"


class StdioPeer:
    """`cloudskills serve` over its stdin and stdout, one JSON-RPC line at a time."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)

    async def send(self, line: str) -> None:
        await self.stdin.send(line.encode() + b"\n")

    async def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(json.dumps(message))

    async def answer(self) -> dict[str, Any]:
        """The next response or error the server writes, skipping its notifications;
        failing rather than waiting forever."""
        with anyio.fail_after(30):
            while True:
                line = await self.stdout.receive_until(b"\n", 10_000_000)
                message: dict[str, Any] = json.loads(line)
                if "id" in message:
                    return message


@pytest.fixture
async def stdio_server(tmp_path: Path) -> AsyncIterator[StdioPeer]:
    home = tmp_path / "home"
    home.mkdir()
    env = {**server_env(home), "CLOUDSKILLS_POOL_SIZE": "0"}
    process = await anyio.open_process([sys.executable, "-m", "runtime", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        peer = StdioPeer(process)
        await peer.request(
            1,
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw-lines", "version": "1"},
            },
        )
        assert "result" in await peer.answer()
        await peer.send('{"jsonrpc":"2.0","method":"notifications/initialized"}')
        yield peer
        await peer.stdin.aclose()  # end of input: the server shuts down by itself
        with anyio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def test_a_request_nested_too_deep_is_a_parse_error_and_the_next_request_is_served(
    stdio_server: StdioPeer,
) -> None:
    await stdio_server.send(DEEP)
    error = await stdio_server.answer()
    assert error["id"] is None and error["error"]["code"] == -32700, error
    assert "recursion limit" in error["error"]["message"]

    await stdio_server.request(3, "ping")
    assert await stdio_server.answer() == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_lines_that_are_not_json_rpc_are_answered_and_serving_goes_on(stdio_server: StdioPeer) -> None:
    await stdio_server.send("{not json")
    error = await stdio_server.answer()
    assert error["id"] is None and error["error"]["code"] == -32700, error

    # JSON, but no JSON-RPC message: an invalid request, answered to its id.
    await stdio_server.send('{"jsonrpc":"2.0","id":4,"method":5}')
    error = await stdio_server.answer()
    assert error["id"] == 4 and error["error"]["code"] == -32600, error

    await stdio_server.request(5, "tools/list")
    listed = await stdio_server.answer()
    assert listed["id"] == 5 and any(tool["name"] == "sandbox_run" for tool in listed["result"]["tools"])
