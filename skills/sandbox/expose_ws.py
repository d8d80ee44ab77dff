"""WebSocket through an exposed port: the server accepts the client's WebSocket and opens one
of its own to the port inside the sandbox (wsproto over the relay of ``sandbox/ports.py``),
then passes messages both ways until either side closes.

Who may open it is decided as for HTTP (``Exposures.container_for``); a refusal closes the
handshake before it is accepted, which the client sees as a 403.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from common.errors import CloudSkillsError
from sandbox.ports import PortConnection

if TYPE_CHECKING:
    from skills.sandbox.expose import Exposures

# Close codes: the sandbox's side could not be reached, or ended abnormally.
UNREACHABLE = 1011


async def forward_websocket(exposures: Exposures, websocket: WebSocket) -> None:
    container_id = await anyio.to_thread.run_sync(exposures.container_for, websocket)
    if container_id is None:
        await websocket.close(code=1008)
        return
    port = int(websocket.path_params["port"])
    target = "/" + str(websocket.path_params["path"]) + (f"?{websocket.url.query}" if websocket.url.query else "")
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        conn = await anyio.to_thread.run_sync(exposures.connect, container_id, port)
    except CloudSkillsError:
        await websocket.close(code=UNREACHABLE)
        return
    upstream = WSConnection(ConnectionType.CLIENT)
    try:
        accepted = await handshake(conn, upstream, f"127.0.0.1:{port}", target, protocols)
        if accepted is None:
            await websocket.close(code=UNREACHABLE)
            return
        await websocket.accept(subprotocol=accepted.subprotocol)
        async with anyio.create_task_group() as group:

            async def down() -> None:
                await from_sandbox(conn, upstream, websocket)
                group.cancel_scope.cancel()

            group.start_soon(down)
            await to_sandbox(conn, upstream, websocket)
            group.cancel_scope.cancel()
    finally:
        conn.close()
        with contextlib.suppress(RuntimeError):
            await websocket.close()


async def handshake(
    conn: PortConnection, upstream: WSConnection, host: str, target: str, protocols: list[str]
) -> AcceptConnection | None:
    await anyio.to_thread.run_sync(conn.send, upstream.send(Request(host=host, target=target, subprotocols=protocols)))
    while True:
        data = await anyio.to_thread.run_sync(conn.recv)
        upstream.receive_data(data or None)
        for event in upstream.events():
            if isinstance(event, AcceptConnection):
                return event
            if isinstance(event, RejectConnection):
                return None
        if not data:
            return None


async def to_sandbox(conn: PortConnection, upstream: WSConnection, websocket: WebSocket) -> None:
    """The client's messages on to the sandbox, until the client goes."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = int(message.get("code") or 1000)
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(conn.send, upstream.send(CloseConnection(code=code)))
                return
            text, data = message.get("text"), message.get("bytes")
            event: TextMessage | BytesMessage = (
                TextMessage(data=text) if text is not None else BytesMessage(data=data or b"")
            )
            await anyio.to_thread.run_sync(conn.send, upstream.send(event))
    except (WebSocketDisconnect, OSError):
        return


async def from_sandbox(conn: PortConnection, upstream: WSConnection, websocket: WebSocket) -> None:
    """The sandbox's messages on to the client, until the sandbox's side closes."""
    text: list[str] = []
    binary: list[bytes] = []
    while True:
        try:
            data = await anyio.to_thread.run_sync(conn.recv)
        except OSError:
            data = b""
        upstream.receive_data(data or None)
        for event in upstream.events():
            if isinstance(event, TextMessage):
                text.append(event.data)
                if event.message_finished:
                    await websocket.send_text("".join(text))
                    text.clear()
            elif isinstance(event, BytesMessage):
                binary.append(bytes(event.data))
                if event.message_finished:
                    await websocket.send_bytes(b"".join(binary))
                    binary.clear()
            elif isinstance(event, Ping):
                await anyio.to_thread.run_sync(conn.send, upstream.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(conn.send, upstream.send(event.response()))
                await websocket.close(code=event.code)
                return
        if not data:
            await websocket.close(code=UNREACHABLE)
            return
