"""Exposed ports and egress allow-lists (issue 17) on real Docker sandboxes: a web server in a
session sandbox answers through the HTTP server's URL, and only to whoever holds its token or its
owner's key; a sandbox reaches the one local server its policy allows and no other. Every server
these tests talk to is one they start on this machine."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from runtime.app import App
from runtime.server import http_app
from runtime.tenants import create_key, ensure_tenant
from skills.sandbox.network import Egress
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SERVE = (
    "mkdir -p /work/site && echo hello-from-sandbox > /work/site/index.html && "
    "exec python3 -m http.server 8080 --bind 127.0.0.1 --directory /work/site"
)


async def test_an_exposed_port_answers_under_gvisor_too(app: App) -> None:
    web = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=http_app(app, "127.0.0.1", 8000)), base_url="http://t")
    async with mcp_client(app) as client, web:
        sid = (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command=SERVE, background=True)
        path = (await call(client, "sandbox_expose", sandbox_id=sid, port=8080))["path"]
        with anyio.fail_after(30):
            while (page := await web.get(path + "index.html")).status_code != 200:  # noqa: ASYNC110 - a server starting
                await anyio.sleep(0.1)
        assert page.text == "hello-from-sandbox\n"
        described = await call(client, "sandbox_describe", sandbox_id=sid)
        assert described["cpu_seconds"] > 0 and described["memory_bytes"] > 0
        assert any("http.server" in p["command"] for p in described["processes"])
        # Closed while paused, open again once resumed: the server inside was never restarted.
        await call(client, "sandbox_pause", sandbox_id=sid)
        assert (await web.get(path + "index.html")).status_code == 404
        await call(client, "sandbox_resume", sandbox_id=sid)
        assert (await web.get(path + "index.html")).text == "hello-from-sandbox\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)


async def test_an_exposed_port_answers_its_token_and_its_owner_only(app: App) -> None:
    web = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=http_app(app, "127.0.0.1", 8000)), base_url="http://t")
    ensure_tenant(app.store, "intruder")
    owner_key = create_key(app.store, app.settings.tenant).key
    intruder_key = create_key(app.store, "intruder").key
    async with mcp_client(app) as client, web:
        sid = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command=SERVE, background=True)
        exposed = await call(client, "sandbox_expose", sandbox_id=sid, port=8080)
        assert exposed["url"] == "http://127.0.0.1:8000" + exposed["path"]
        path = exposed["path"]

        with anyio.fail_after(30):
            while (await web.get(path + "index.html")).status_code != 200:  # noqa: ASYNC110 - a server starting
                await anyio.sleep(0.1)
        page = await web.get(path + "index.html")
        assert page.text == "hello-from-sandbox\n"
        assert page.headers["content-security-policy"].startswith("sandbox ")  # an opaque origin
        listing = await web.get(path)
        assert listing.status_code == 200 and listing.text == page.text  # its directory index
        token = path.rstrip("/").rsplit("/", 1)[1]
        wrong = path.replace(token, ("y" if token[0] == "x" else "x") + token[1:])  # never the token itself
        assert (await web.get(wrong + "index.html")).status_code == 404
        owner = exposed["owner_path"] + "index.html"
        assert (await web.get(owner, headers={"Authorization": f"Bearer {intruder_key}"})).status_code == 404
        assert (await web.get(owner)).status_code == 404
        assert (await web.get(owner, headers={"Authorization": f"Bearer {owner_key}"})).text == "hello-from-sandbox\n"
        # A port nothing listens on: a clear answer, not a hang.
        other = await call(client, "sandbox_expose", sandbox_id=sid, port=9)
        refused = await web.get(other["path"])
        assert refused.status_code == 502 and "port 9" in refused.text
        # Another tenant cannot expose it.
        async with mcp_client(app, tenant="intruder") as theirs:
            result = await theirs.call_tool("sandbox_expose", {"sandbox_id": sid, "port": 8080})
            assert result.is_error
        # Its description: usage now, its processes, its exposed ports, no network.
        hold = "python3 -c 'b = bytearray(96 << 20); import time; time.sleep(600)'"
        await call(client, "sandbox_exec", sandbox_id=sid, command=hold, background=True)
        await call(client, "sandbox_exec", sandbox_id=sid, command="head -c 5000000 /dev/urandom > /work/blob")
        with anyio.fail_after(30):
            while True:
                described = await call(client, "sandbox_describe", sandbox_id=sid)
                if described["memory_bytes"] >= 96 << 20:
                    break
                await anyio.sleep(0.2)
        assert described["state"] == "running" and described["template"] == "python"
        assert described["memory_peak_bytes"] >= described["memory_bytes"] and described["cpu_seconds"] > 0
        assert described["disk_used_bytes"] >= 5_000_000
        commands = " | ".join(p["command"] for p in described["processes"])
        assert "http.server 8080" in commands and "bytearray" in commands, commands
        assert [p["port"] for p in described["exposed_ports"]] == [9, 8080]
        assert described["network"] is None and described["paused_at"] is None
        await call(client, "sandbox_destroy", sandbox_id=sid)
        assert (await web.get(path + "index.html")).status_code == 404


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.server_address[1]}".encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def local_server() -> Iterator[int]:
    """A web server on 127.0.0.1 of this machine, for as long as the test needs it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


# Inside the sandbox: fetch through the proxy its environment names (even for 127.0.0.1, which
# NO_PROXY would keep local: here it means the host's), over plain HTTP and a CONNECT tunnel,
# and try the host's ports directly.
PROBE = """
import os, socket, sys, urllib.request
proxy = os.environ["HTTP_PROXY"]
os.environ.pop("NO_PROXY"), os.environ.pop("no_proxy")  # urllib would bypass the proxy for 127.0.0.1
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
for port in sys.argv[1:3]:
    try:
        print("GET", port, opener.open(f"http://127.0.0.1:{port}/", timeout=10).read().decode())
    except Exception as exc:
        print("GET", port, "refused:", getattr(exc, "reason", exc))
def tunnel(target):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    return s, s.recv(4096).decode().split("\\r\\n")[0]
s, status = tunnel(f"127.0.0.1:{sys.argv[1]}")
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
answer = b""
while chunk := s.recv(4096):  # HTTP/1.0: the server closes after its answer
    answer += chunk
print("TUNNEL", status, answer.decode().rsplit("\\r\\n", 1)[-1])
print("NAME", tunnel("example.com:443")[1])
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    print("DIRECT reached")
except OSError as exc:
    print("DIRECT failed", exc.errno)
"""


async def test_egress_reaches_exactly_what_it_allows(app: App) -> None:
    egress = app.service(Egress)
    egress.cap = ["127.0.0.1:*"]  # the operator lets sandboxes name this machine's loopback (the test's servers)
    with local_server() as allowed, local_server() as denied:
        async with mcp_client(app) as client:
            refused = await client.call_tool(
                "sandbox_create", {"template": "python", "network": {"allow": ["10.1.2.0/24:5432"]}}
            )
            assert refused.is_error and "beyond what this server lets sandboxes reach" in refused.content[0].text  # type: ignore[union-attr]
            sandbox = await call(
                client, "sandbox_create", template="python", network={"allow": [f"127.0.0.1:{allowed}"]}
            )
            sid = sandbox["sandbox_id"]
            await call(client, "sandbox_write_file", sandbox_id=sid, path="probe.py", content=PROBE)
            out = await call(client, "sandbox_exec", sandbox_id=sid, command=f"python3 probe.py {allowed} {denied}")
            lines = out["stdout"].splitlines()
            assert f"GET {allowed} hello from {allowed}" in lines, out
            assert any(line.startswith(f"GET {denied} refused:") and "allow-list" in line for line in lines), out
            assert f"TUNNEL HTTP/1.1 200 Connection established hello from {allowed}" in lines, out
            assert any(line.startswith("NAME HTTP/1.1 403") and "example.com:443" in line for line in lines), out
            assert "DIRECT failed 111" in lines, out  # its own loopback: nothing there, and no route out
            # One call: the same policy for sandbox_run.
            run = await call(
                client,
                "sandbox_run",
                command=f"python3 probe.py {allowed} {denied}",
                files=[{"path": "probe.py", "content": PROBE}],
                network={"allow": [f"127.0.0.1:{allowed}"]},
            )
            assert f"GET {allowed} hello from {allowed}" in run["stdout"], run
            # Without `network`: no proxy at all.
            plain = await call(client, "sandbox_run", command="echo ${HTTP_PROXY:-none}", network=None)
            assert plain["stdout"] == "none\n"
            described = await call(client, "sandbox_describe", sandbox_id=sid)
            assert described["network"] == [f"127.0.0.1:{allowed}"]
            # As after a restart: this server's proxy is gone, and comes back from the record.
            await egress.proxies.pop(sid).close()
            await egress.reconcile()
            again = await call(client, "sandbox_exec", sandbox_id=sid, command=f"python3 probe.py {allowed} {denied}")
            assert f"GET {allowed} hello from {allowed}" in again["stdout"].splitlines(), again
            directory = egress.proxies[sid].directory
            await call(client, "sandbox_destroy", sandbox_id=sid)
            with anyio.fail_after(10):
                while egress.proxies or directory.exists():  # noqa: ASYNC110 - its reconcile runs every second
                    await anyio.sleep(0.1)


async def test_egress_under_gvisor_reaches_what_it_allows_before_and_after_a_pause(app: App) -> None:
    app.service(Egress).cap = ["127.0.0.1:*"]  # the test's own servers, on this machine's loopback
    with local_server() as allowed, local_server() as denied:
        async with mcp_client(app) as client:
            network = {"allow": [f"127.0.0.1:{allowed}"]}
            sid = (await call(client, "sandbox_create", template="python-gvisor", network=network))["sandbox_id"]
            await call(client, "sandbox_write_file", sandbox_id=sid, path="probe.py", content=PROBE)
            for _ in ("before", "after"):
                out = await call(client, "sandbox_exec", sandbox_id=sid, command=f"python3 probe.py {allowed} {denied}")
                lines = out["stdout"].splitlines()
                assert f"GET {allowed} hello from {allowed}" in lines, out
                assert any(line.startswith(f"GET {denied} refused:") and "allow-list" in line for line in lines), out
                assert f"TUNNEL HTTP/1.1 200 Connection established hello from {allowed}" in lines, out
                await call(client, "sandbox_pause", sandbox_id=sid)
                await call(client, "sandbox_resume", sandbox_id=sid)
            await call(client, "sandbox_destroy", sandbox_id=sid)


# A WebSocket echo server on the stdlib alone (frames under 126 bytes), inside the sandbox.
ECHO = r"""
import base64, hashlib, socket, struct
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8081))
s.listen(4)
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    f = c.makefile("rb")
    while True:
        b1, b2 = f.read(2)
        op, n = b1 & 15, b2 & 127
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        mask = f.read(4)
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(f.read(n)))
        if op == 8:
            c.sendall(b"\x88\x02\x03\xe8")
            break
        reply = b"echo:" + data
        c.sendall(bytes([0x80 | op, len(reply)]) + reply)
    c.close()
"""


async def test_an_exposed_port_carries_websockets(app: App) -> None:
    asgi = http_app(app, "127.0.0.1", 8000)
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
        await call(client, "sandbox_write_file", sandbox_id=sid, path="echo.py", content=ECHO)
        await call(client, "sandbox_exec", sandbox_id=sid, command="exec python3 echo.py", background=True)
        path = (await call(client, "sandbox_expose", sandbox_id=sid, port=8081))["path"]

        def talk() -> list[str]:
            with TestClient(asgi).websocket_connect(path + "chat") as ws:  # no lifespan: MCP's runs once
                ws.send_text("hi")
                ws.send_bytes(b"\x00\x01")
                return [ws.receive_text(), repr(ws.receive_bytes())]

        with anyio.fail_after(60):
            while True:
                try:
                    answers = await anyio.to_thread.run_sync(talk)
                    break
                except WebSocketDisconnect:  # the server is still starting
                    await anyio.sleep(0.2)
        assert answers == ["echo:hi", repr(b"echo:\x00\x01")]

        def refused() -> None:
            with TestClient(asgi).websocket_connect(path.replace("/ports/8081/", "/ports/8082/")):
                pass

        with pytest.raises(WebSocketDisconnect):
            await anyio.to_thread.run_sync(refused)
        await call(client, "sandbox_destroy", sandbox_id=sid)
