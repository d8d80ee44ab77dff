"""Servers the tests start on this machine's loopback: a free port, an ASGI app served on one."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn

from runtime.server import QuietUvicorn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def serving(asgi: Any) -> AsyncIterator[str]:
    """``asgi`` on a free loopback port while inside, as ``cloudskills serve --http`` serves it
    (``QuietUvicorn``); its base URL. Leaving stops it and waits until it has."""
    port = free_port()
    server = QuietUvicorn(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, not an event)
                await anyio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
        server.stop()
