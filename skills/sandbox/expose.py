"""Exposed ports: a URL on the HTTP server that forwards HTTP and WebSocket to a port inside a session sandbox.

``sandbox_expose`` records the port with the hash of a fresh unguessable token
(``secrets.token_urlsafe``) and returns
``<server>/sandboxes/<sandbox_id>/ports/<port>/<token>/``. A request there is
forwarded to ``127.0.0.1:<port>`` inside the sandbox by a relay the engine
runs in it (``sandbox/ports.py``: the sandbox keeps no network). With ``-``
in place of the token the owner's key (``Authorization: Bearer``) opens it
instead; that header is never passed on. A wrong token, another tenant's key,
a port not exposed, a sandbox destroyed, paused or gone: all answer the same
404, so nothing tells one from the other (a WebSocket: its handshake refused). The exposure lives as long as its
sandbox: each request checks that the sandbox still runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import h11
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from common.errors import CloudSkillsError, NotFound, QuotaExceeded
from sandbox.docker import DockerDriver
from sandbox.ports import PortConnection, connect_port
from scheduler.models import utcnow
from scheduler.store import Store
from scheduler.tasks import TaskContext, new_id
from skills.base import OpInput
from skills.sandbox.expose_ws import forward_websocket
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import SANDBOX_ID
from skills.sandbox.network_rows import SandboxExposure
from skills.sandbox.rows import Sandbox

PREFIX = "/sandboxes"
MAX_EXPOSED = 8  # ports per sandbox
MAX_BODY = 16 << 20  # a request body forwarded in
# Never passed on: hop-by-hop headers, and the caller's key.
DROPPED = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "authorization", "host"}
# What an exposed app's page may do: run scripts and forms, as its own opaque origin (see answer_headers).
ISOLATION = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
UNKNOWN = "nothing is exposed here: check the URL sandbox_expose returned (the sandbox may have been destroyed)."


class ExposeInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    port: int = Field(ge=1, le=65535, description="The TCP port a server listens on inside the sandbox (127.0.0.1).")


class ExposeOutput(BaseModel):
    sandbox_id: str
    port: int
    url: str = Field(description="Where the port answers over HTTP; its token is the secret: share it with care.")
    path: str = Field(description="The URL's path on the server, for a client that knows the server's address.")
    owner_path: str = Field(description="The same port without the token: send your key (Authorization: Bearer).")


class ExposedPort(BaseModel):
    port: int
    exposed_at: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Exposures:
    """The exposed ports of every session sandbox, and the routes that serve them."""

    def __init__(
        self,
        store: Store,
        docker: DockerDriver,
        public_url: str | None = None,
        engine_of: Callable[[str], DockerDriver] | None = None,
    ) -> None:
        self.store = store
        self.docker = docker
        # The engine holding a container (several engines: sandbox/engines.py); else the one.
        self.engine_of = engine_of or (lambda container_id: docker)
        self.public_url = public_url
        self.base_url = public_url or ""
        self.tenant_of_key: Callable[[str], str | None] = lambda key: None

    def connect(self, container_id: str, port: int) -> PortConnection:
        """A connection to the port inside the sandbox, through its own engine (blocking)."""
        return connect_port(self.engine_of(container_id).client.api, container_id, port)

    def expose(self, tenant_id: str, sandbox_id: str, port: int) -> ExposeOutput:
        token = secrets.token_urlsafe(24)
        with self.store.transaction() as session:
            rows = list(session.scalars(select(SandboxExposure).where(SandboxExposure.sandbox_id == sandbox_id)))
            row = next((r for r in rows if r.port == port), None)
            if row is None:
                if len(rows) >= MAX_EXPOSED:
                    raise QuotaExceeded(
                        f"sandbox {sandbox_id!r} already exposes {MAX_EXPOSED} ports: serve more from one port."
                    )
                row = SandboxExposure(id=new_id("exp"), sandbox_id=sandbox_id, tenant_id=tenant_id, port=port)
                session.add(row)
            row.token_sha256, row.created_at = token_hash(token), utcnow()
        path = f"{PREFIX}/{sandbox_id}/ports/{port}/{token}/"
        return ExposeOutput(
            sandbox_id=sandbox_id,
            port=port,
            url=f"{self.base_url}{path}",
            path=path,
            owner_path=f"{PREFIX}/{sandbox_id}/ports/{port}/-/",
        )

    def exposed(self, sandbox_id: str) -> list[ExposedPort]:
        with self.store.transaction() as session:
            rows = session.scalars(
                select(SandboxExposure).where(SandboxExposure.sandbox_id == sandbox_id).order_by(SandboxExposure.port)
            )
            return [ExposedPort(port=r.port, exposed_at=r.created_at.isoformat()) for r in rows]

    def web_routes(self, base_url: str, tenant_of_key: Callable[[str], str | None]) -> list[BaseRoute]:
        """The forwarding routes; ``base_url`` is where this server answers (unless the
        operator set a public URL), ``tenant_of_key`` whose a bearer key is."""
        self.base_url = self.public_url or base_url
        self.tenant_of_key = tenant_of_key
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return [
            Route(PREFIX + "/{sandbox_id}/ports/{port:int}/{token}/{path:path}", self.forward, methods=methods),
            Route(PREFIX + "/{sandbox_id}/ports/{port:int}/{token}", self.redirect, methods=["GET", "HEAD"]),
            WebSocketRoute(PREFIX + "/{sandbox_id}/ports/{port:int}/{token}/{path:path}", self.websocket),
        ]

    async def websocket(self, websocket: WebSocket) -> None:
        await forward_websocket(self, websocket)

    async def redirect(self, request: Request) -> Response:
        return Response(status_code=308, headers={"location": request.url.path + "/"})

    def container_for(self, request: HTTPConnection) -> str | None:
        """The running container behind this URL, if the caller may reach it."""
        sandbox_id, port = request.path_params["sandbox_id"], int(request.path_params["port"])
        token = str(request.path_params["token"])
        key_tenant = None
        if token == "-":
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            key_tenant = self.tenant_of_key(key.strip()) if scheme.lower() == "bearer" else None
        with self.store.reading() as session:  # every proxied request's: never waits for a writer
            row = session.scalar(
                select(SandboxExposure).where(SandboxExposure.sandbox_id == sandbox_id, SandboxExposure.port == port)
            )
            sandbox = session.get(Sandbox, sandbox_id)
            if row is None or sandbox is None or sandbox.state != "running" or not sandbox.container_id:
                return None
            if token == "-":
                allowed = key_tenant is not None and key_tenant == row.tenant_id
            else:
                allowed = hmac.compare_digest(token_hash(token), row.token_sha256)
            return sandbox.container_id if allowed else None

    async def forward(self, request: Request) -> Response:
        container_id = await anyio.to_thread.run_sync(self.container_for, request)
        if container_id is None:
            return PlainTextResponse(UNKNOWN, status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse(f"the request body is over {MAX_BODY >> 20} MiB: send less.", status_code=413)
        target = "/" + str(request.path_params["path"]) + (f"?{request.url.query}" if request.url.query else "")
        port = int(request.path_params["port"])
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROPPED]
        headers += [("host", f"127.0.0.1:{port}"), ("connection", "close"), ("content-length", str(len(body)))]
        client = h11.Connection(h11.CLIENT)
        raw = client.send(h11.Request(method=request.method, target=target, headers=headers)) or b""
        if body:
            raw += client.send(h11.Data(data=body)) or b""
        raw += client.send(h11.EndOfMessage()) or b""
        try:
            conn = await anyio.to_thread.run_sync(self.connect, container_id, port)
        except CloudSkillsError as exc:
            return PlainTextResponse(str(exc), status_code=502)
        try:
            await anyio.to_thread.run_sync(conn.send, raw)
            head = await anyio.to_thread.run_sync(read_head, conn, client)
        except (OSError, h11.ProtocolError) as exc:
            conn.close()
            return PlainTextResponse(bad_gateway(conn, port, exc), status_code=502)
        if head is None:
            conn.close()
            return PlainTextResponse(bad_gateway(conn, port, None), status_code=502)
        answer = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        response = StreamingResponse(body_of(conn, client), status_code=head.status_code, media_type=None)
        home = f"{PREFIX}/{request.path_params['sandbox_id']}/ports/{port}/{request.path_params['token']}/"
        response.raw_headers.extend(answer_headers(answer, home))
        return response


def answer_headers(answer: list[tuple[str, str]], home: str) -> list[tuple[bytes, bytes]]:
    """The app's answer headers as the server sends them on. An exposed app shares the server's
    origin with the console and with every other tenant's apps, so its page is an opaque origin
    (CSP ``sandbox`` without ``allow-same-origin``: its scripts reach nothing of the server's with
    the visitor's cookies), and each cookie it sets is scoped to its own URL (``home``), where no
    other app, nor the console, is sent it. Every Set-Cookie is kept (not folded into one)."""
    kept: list[tuple[bytes, bytes]] = []
    for name, value in answer:
        lowered = name.lower()
        if lowered in DROPPED or lowered == "content-length":
            continue
        if lowered == "set-cookie":
            value = scoped_cookie(value, home)
        kept.append((lowered.encode("latin-1"), value.encode("latin-1")))
    kept.append((b"content-security-policy", ISOLATION.encode()))
    return kept


def scoped_cookie(value: str, home: str) -> str:
    """A Set-Cookie value with its Path set to ``home`` and no Domain."""
    cookie, *attributes = [part.strip() for part in value.split(";")]
    own = [a for a in attributes if a and a.split("=", 1)[0].strip().lower() not in ("path", "domain")]
    return "; ".join([cookie, *own, f"Path={home}"])


def bad_gateway(conn: PortConnection, port: int, exc: Exception | None) -> str:
    said = conn.error.decode(errors="replace").strip()
    if said:
        return f"{said}: start a server listening on 127.0.0.1:{port} or 0.0.0.0:{port} in the sandbox, then retry."
    detail = f" ({exc})" if exc else ""
    return f"the server on port {port} in the sandbox closed the connection without an HTTP answer{detail}."


def read_head(conn: PortConnection, client: h11.Connection) -> h11.Response | None:
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(conn.recv())
            continue
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None
        # an informational (1xx) answer: skip it


async def body_of(conn: PortConnection, client: h11.Connection) -> AsyncIterator[bytes]:
    try:
        while True:
            event: Any = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await anyio.to_thread.run_sync(conn.recv))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            else:  # the end of the message, or of the connection
                return
    finally:
        conn.close()


async def expose(ctx: TaskContext, args: ExposeInput) -> ExposeOutput:
    """Expose a port of a session sandbox at a URL guarded by a fresh token."""
    record = ctx.service(SandboxManager).get(ctx.tenant_id, args.sandbox_id)
    if record.task_id is not None:
        raise NotFound(f"no sandbox {args.sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
    return ctx.service(Exposures).expose(ctx.tenant_id, record.id, args.port)
