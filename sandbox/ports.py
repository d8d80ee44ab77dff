"""A TCP connection to a port inside a sandbox, from the host, though the sandbox has no network.

Why ``docker exec`` of a small relay, one per connection: the sandbox keeps
``network_mode: none`` (nothing on the host's side to connect to), and the
agent's attached channel (``sandbox/attach.py``) serves one request at a time,
so a long-lived byte stream there would block every other call. An exec'd
relay is a process of its own beside the agent: it connects to
``127.0.0.1:<port>`` inside the container and copies bytes both ways, its
stdin and stdout being the engine's hijacked exec stream. It needs nothing
in the image but the Python the agent already runs on, works the same under
runc and gVisor and from any replica (no attach channel held), and its cost
(an exec, tens of milliseconds) is paid per connection, not per byte.

Docker multiplexes the exec's stdout and stderr (8-byte header per chunk,
without a TTY; a TTY would mangle bytes); stdin passes through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import cast

import docker
import docker.errors
import requests.exceptions

from common.errors import BackendUnavailable, NotFound

SANDBOX_USER = "1000:1000"
CHUNK = 1 << 16
# Inside the sandbox: connect, then copy stdin to the socket and the socket to stdout.
RELAY = r"""
import os, socket, sys, threading
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
except OSError as exc:
    sys.stderr.write(f"nothing accepts connections on port {port} inside the sandbox ({exc.strerror or exc})")
    sys.exit(3)
s.settimeout(None)
def up():
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""


class PortConnection:
    """One relayed connection: bytes in with ``send``, bytes out with ``recv`` (b"" at the end)."""

    def __init__(self, sock: socket.socket, owner: object) -> None:
        self._sock = sock
        self._owner = owner  # what the SDK wrapped the socket in: kept alive with it
        self._pending = 0  # bytes of the current stdout chunk not yet read
        self.error = bytearray()  # what the relay said on stderr (why it could not connect)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self, timeout_s: float = 300.0) -> bytes:
        """The next bytes from the port; b"" once the connection has ended."""
        self._sock.settimeout(timeout_s)
        while self._pending == 0:
            header = self._exactly(8)
            if len(header) < 8:
                return b""
            stream, size = struct.unpack(">BxxxL", header)
            if stream == 1:
                self._pending = size
            else:
                self.error += self._exactly(size)[:4096]
        data = self._sock.recv(min(self._pending, CHUNK))
        if not data:
            return b""
        self._pending -= len(data)
        return data

    def _exactly(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            part = self._sock.recv(size - len(out))
            if not part:
                break
            out += part
        return bytes(out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()


def connect_port(api: docker.APIClient, container_id: str, port: int) -> PortConnection:
    """A connection to ``127.0.0.1:port`` inside the sandbox (blocking: run it off the event loop)."""
    try:
        exec_id = api.exec_create(
            container_id, ["python3", "-c", RELAY, str(port)], stdin=True, user=SANDBOX_USER, workdir="/"
        )["Id"]
        sock = api.exec_start(exec_id, socket=True)
    except docker.errors.NotFound as exc:
        raise NotFound("this sandbox no longer exists: create a new one and expose its port again.") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise NotFound("this sandbox is not running: resume or recreate it, then expose its port again.") from exc
        raise BackendUnavailable(f"Docker refused to reach the sandbox's port: {exc.explanation}.") from exc
    except requests.exceptions.RequestException as exc:
        raise BackendUnavailable(f"the Docker Engine is not reachable ({type(exc).__name__}): try again.") from exc
    return PortConnection(cast(socket.socket, getattr(sock, "_sock", sock)), owner=sock)
