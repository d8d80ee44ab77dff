"""MCP over stdio where every line gets an answer.

The SDK's ``stdio_server`` hands a line it cannot parse to the server as an
exception, and the server only logs it at debug level: the client, which cannot
know its request was dropped, waits forever. A request nested deeper than the
JSON parser's recursion limit is such a line. Here it is answered as JSON-RPC
2.0 says, and the next lines are served as before:

- not JSON (or too deep to parse): a parse error (-32700) with a null id;
- JSON but no JSON-RPC message: an invalid request (-32600), with the line's id
  when it has one.

Everything else (claiming fd 0 and 1, framing, encoding) is the SDK's own
``stdio_server``; this module only sits on its read stream, and ``run_stdio``
is ``MCPServer.run_stdio_async`` on that stream.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Self

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

log = logging.getLogger("cloudskills.stdio")


def error_for(exc: Exception) -> JSONRPCError:
    """The JSON-RPC answer to a line the transport could not turn into a message."""
    if not isinstance(exc, ValidationError):
        return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message=f"Parse error: {exc}"))
    errors = exc.errors(include_url=False)
    unparsed = [error for error in errors if error["type"] == "json_invalid"]
    if unparsed:
        # The parser's own words, e.g. "Invalid JSON: recursion limit exceeded at line 1 column 1050".
        message = f"Parse error: {unparsed[0]['msg']}"
        return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message=message))
    message = "Invalid Request: the line is JSON but not a JSON-RPC 2.0 request, notification or response"
    ids = (error["input"].get("id") for error in errors if isinstance(error["input"], dict))
    request_id = next((i for i in ids if isinstance(i, str | int) and not isinstance(i, bool)), None)
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=INVALID_REQUEST, message=message))


class AnsweringReadStream:
    """The transport's read stream, less its exceptions: each is answered on the write
    stream instead of reaching the server, which would drop it."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], write: WriteStream[SessionMessage]) -> None:
        self._inner = inner
        self._write = write

    @property
    def last_context(self) -> Any:
        # The SDK's dispatcher runs each message in the context its sender had.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            answer = error_for(item)
            log.warning("answered a line that is no JSON-RPC message: %s", answer.error.message)
            # When stdout is already gone the session is ending, and the next receive ends it.
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._write.send(SessionMessage(answer))

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def answering_stdio_server() -> AsyncIterator[tuple[AnsweringReadStream, WriteStream[SessionMessage]]]:
    """The SDK's ``stdio_server``, whose unparseable lines are answered rather than dropped."""
    async with stdio_server() as (read_stream, write_stream):
        yield AnsweringReadStream(read_stream, write_stream), write_stream


async def run_stdio(server: MCPServer) -> None:
    """Serve ``server`` over stdio until stdin closes: ``MCPServer.run_stdio_async``, on the
    answering transport."""
    # MCPServer takes no streams of ours, so drive its low-level server as run_stdio_async does.
    lowlevel = server._lowlevel_server
    async with answering_stdio_server() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def exit_at_once() -> None:
    """End the process now, its work done: what a server does once stdin has closed and it
    has shut down cleanly. Unloading the interpreter's modules (an inference engine's
    among them) would take most of a second more, past what MCP clients wait before they
    kill a server."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)
