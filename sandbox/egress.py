"""Egress allow-lists: a sandbox reaches exactly the ``host:port`` its policy names, and nothing else.

The sandbox keeps ``network_mode: none``: no interface but loopback, no route,
no resolver, so nothing it does can send a packet out by itself. Its way out
is an HTTP proxy the server runs on a unix socket in a directory bound into
the container (``SOCKET_DIR``); a small forwarder inside (``FORWARDER``,
started by ``docker exec``) listens on ``127.0.0.1:3128`` and passes each
connection to that socket, and the sandbox's commands get ``HTTP_PROXY``,
``HTTPS_PROXY`` and ``ALL_PROXY`` pointing there. The proxy takes ``CONNECT
host:port`` (any TCP protocol in a tunnel: TLS, ...) and plain
``GET http://host:port/...``; it checks the destination against the policy,
resolves the name itself (DNS is under the same policy: a name not allowed is
never looked up), checks the address again, and connects. Anything refused is
answered at once, ``403`` with the reason in the status line and the body.

A name rule (``*.example.org:443``) reaches public addresses only: a name
that resolves to a loopback, private or link-local address is refused, so a
DNS record cannot point a sandbox at the server's own network. Addresses
inside are reached only by an IP or CIDR rule, which the operator's cap must
cover (``Policy.within``).

A gVisor sandbox connects to the proxy's socket only where the engine runs
runsc with ``--host-uds=open`` (``scripts/ensure-docker`` registers it so; no
other host socket is bound into a sandbox); elsewhere allow-lists are for runc
templates, and the error says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput

log = logging.getLogger("cloudskills.egress")

SOCKET_DIR = "/run/cloudskills-egress"  # inside the sandbox
SOCKET_NAME = "s"
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
PROXY_ENV = {
    **{
        name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    },
    "NO_PROXY": "localhost,127.0.0.1,::1",
    "no_proxy": "localhost,127.0.0.1,::1",
}
MAX_RULES = 32
MAX_HEAD = 64 << 10
CONNECT_TIMEOUT_S = 10.0
HOST_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Rule:
    """One ``host:port``: a name (``*.`` matches any subdomain), or an IP or CIDR; port ``*`` is any."""

    text: str
    name: str | None
    network: Network | None
    port: int | None  # None: any port

    @classmethod
    def parse(cls, text: str) -> Rule:
        host, sep, port_text = text.strip().rpartition(":")
        host = host.strip("[]").lower()
        if not sep or not host:
            raise InvalidInput(f"network rule {text!r} is not host:port, e.g. 'pypi.org:443' or '10.1.2.0/24:5432'.")
        if port_text == "*":
            port = None
        elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise InvalidInput(f"network rule {text!r} has no valid port: give 1-65535 or '*'.")
        try:
            network: Network | None = ipaddress.ip_network(host, strict=False)
        except ValueError:
            network = None
        if network is None and not HOST_NAME.match(host):
            raise InvalidInput(f"network rule {text!r}: {host!r} is neither a host name, '*.domain', an IP nor a CIDR.")
        return cls(text.strip(), None if network else host, network, port)

    def matches(self, host: str, port: int, address: Address | None = None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            target = address or literal(host)
            return target is not None and target.version == self.network.version and target in self.network
        assert self.name is not None
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def within(self, cap: Rule) -> bool:
        """Whether everything this rule allows, the operator's ``cap`` allows too."""
        if cap.port is not None and self.port != cap.port:
            return False
        if self.network is not None:
            return (
                cap.network is not None
                and self.network.version == cap.network.version
                and self.network.subnet_of(cap.network)  # type: ignore[arg-type]
            )
        assert self.name is not None
        return cap.name is not None and (self.name == cap.name or fnmatch.fnmatchcase(self.name, cap.name))

    @property
    def inside(self) -> bool:
        """Whether it names addresses that are not public (loopback, private, link-local...)."""
        return self.network is not None and not self.network.is_global


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, allow: list[str], cap: list[str] | None) -> Policy:
        """The tenant's rules, refused unless the operator's ``cap`` covers each one (no cap:
        any host name and public address, nothing inside the server's networks)."""
        if len(allow) > MAX_RULES:
            raise InvalidInput(f"network.allow has {len(allow)} rules; at most {MAX_RULES}: use '*.domain' or a CIDR.")
        rules = tuple(Rule.parse(text) for text in allow)
        caps = [Rule.parse(text) for text in cap] if cap is not None else None
        for rule in rules:
            if caps is None and rule.inside:
                raise InvalidInput(
                    f"network rule {rule.text!r} names addresses inside this server's networks, which this "
                    "server does not allow: ask its operator to add them to sandbox_egress_cap, or use a public host."
                )
            if caps is not None and not any(rule.within(c) for c in caps):
                allowed = ", ".join(cap or []) or "nothing"
                raise InvalidInput(
                    f"network rule {rule.text!r} is beyond what this server lets sandboxes reach ({allowed}): "
                    "ask its operator, or narrow the rule."
                )
        return cls(rules)

    def rule_for(self, host: str, port: int) -> Rule | None:
        return next((r for r in self.rules if r.matches(host, port)), None)

    def texts(self) -> list[str]:
        return [r.text for r in self.rules]


class Refused(Exception):
    """A connection the policy does not allow, or that failed: the reason is the message."""


async def resolve(policy: Policy, host: str, port: int) -> list[Address]:
    """The addresses to connect to, under the policy (the name is looked up only when allowed)."""
    rule = policy.rule_for(host, port)
    if rule is None:
        raise Refused(f"{host}:{port} is not in this sandbox's network allow-list ({', '.join(policy.texts())})")
    if rule.network is not None:
        address = literal(host)
        assert address is not None
        return [address]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(f"{host} could not be resolved ({exc.strerror or exc})") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    public = [a for a in addresses if a.is_global]
    if not public:
        raise Refused(f"{host} resolves to an address inside this server's networks, which a name rule never reaches")
    return public


class EgressProxy:
    """The proxy of one sandbox: a unix socket on the host, serving its policy."""

    def __init__(self, directory: Path, policy: Policy) -> None:
        self.directory = directory
        self.policy = policy
        self._server: asyncio.AbstractServer | None = None

    @property
    def path(self) -> Path:
        return self.directory / SOCKET_NAME

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous process's
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o666)  # the sandbox's user (uid 1000) connects

    async def close(self, remove: bool = False) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        try:
            method, target, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, port, rest = destination(method, target, version, head)
            addresses = await resolve(self.policy, host, port)
            upstream_reader, upstream_writer = await connect(addresses, port)
        except Refused as exc:
            await refuse(writer, f"cloudskills egress: {exc}")
            return
        except ValueError:
            await refuse(writer, "cloudskills egress: not an HTTP proxy request (use CONNECT host:port)", 400)
            return
        if method.upper() == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream_writer.write(rest)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def destination(method: str, target: str, version: str, head: bytes) -> tuple[str, int, bytes]:
    """Host, port and (for a plain request) the head to send upstream, in origin form."""
    if method.upper() == "CONNECT":
        host, _, port = target.rpartition(":")
        return host.strip("[]").lower(), int(port), b""
    match = re.match(r"^http://(\[[^\]]+\]|[^/:]+)(?::(\d+))?(/.*)?$", target, re.IGNORECASE)
    if match is None:
        raise ValueError(target)
    name, number = match.group(1).strip("[]").lower(), int(match.group(2) or 80)
    first = f"{method} {match.group(3) or '/'} {version}".encode("latin-1")
    return name, number, first + b"\r\n" + head.split(b"\r\n", 1)[1]


async def connect(addresses: list[Address], port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    failure: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            failure = exc if isinstance(exc, OSError) else OSError("timed out")
    raise Refused(f"could not connect to port {port} ({failure.strerror or failure if failure else 'no address'})")


async def refuse(writer: asyncio.StreamWriter, message: str, status: int = 403) -> None:
    reason = message.replace("\r", " ").replace("\n", " ")
    body = (message + "\n").encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode("latin-1", errors="replace") + b"Connection: close\r\n\r\n" + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


# Inside the sandbox: listen on 127.0.0.1:3128, pass each connection to the proxy's socket.
# The launcher exits once it listens (so a command right after it finds it); its child serves.
FORWARDER = rf"""
import os, socket, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", {PROXY_PORT}))
listener.listen(64)
if os.fork():
    os._exit(0)
os.setsid()
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(conn):
    up = socket.socket(socket.AF_UNIX)
    try:
        up.connect("{SOCKET_DIR}/{SOCKET_NAME}")
    except OSError:
        conn.sendall(b"HTTP/1.1 502 cloudskills egress: the server's proxy is not running\r\nContent-Length: 0\r\n\r\n")
        conn.close()
        return
    other = threading.Thread(target=pipe, args=(conn, up), daemon=True)
    other.start()
    pipe(up, conn)
    other.join()
    conn.close()
    up.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def socket_root() -> Path:
    """Where proxies' sockets live on the host: a short path (a unix socket's is capped at 108 bytes)."""
    return Path(os.environ.get("CLOUDSKILLS_EGRESS_DIR", "/tmp/cloudskills-egress"))
