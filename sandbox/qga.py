"""The two JSON line protocols a QEMU VM speaks on its unix sockets.

The guest agent (qemu-ga, inside the guest) runs commands and moves files;
QMP (QEMU itself) takes disk snapshots. Both are blocking clients, one call
per connection, for the driver's worker threads.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any

from common.errors import BackendUnavailable

MAX_LINE_BYTES = 64 << 20


class ProtocolError(BackendUnavailable):
    pass


class LineSocket:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("the VM closed its connection: it may have stopped.")
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE_BYTES:
                raise ProtocolError("the VM sent an answer too large to read.")
        line, _, self.buffer = self.buffer.partition(b"\n")
        # A guest-sync-delimited answer is preceded by 0xFF, which resets the parser.
        answer: dict[str, Any] = json.loads(line.lstrip(b"\xff").decode())
        return answer

    def close(self) -> None:
        self.sock.close()


def result_of(answer: dict[str, Any], command: str) -> Any:
    if "error" in answer:
        error = answer["error"]
        raise ProtocolError(f"{command} failed in the VM: {error.get('desc', error)}.")
    return answer.get("return")


def agent_call(path: Path, command: str, arguments: dict[str, Any] | None = None, timeout_s: float = 10.0) -> Any:
    """One guest agent command. A sync with a fresh id first skips any answer a
    previous, abandoned client left in the channel."""
    conn = LineSocket(path, timeout_s)
    try:
        token = random.randrange(1, 2**31)
        conn.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while result_of(conn.receive(), "guest-sync") != token:
            pass
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        conn.send(message)
        return result_of(conn.receive(), command)
    finally:
        conn.close()


def agent_answers(path: Path, timeout_s: float) -> bool:
    """Whether the guest agent answers a ping within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            agent_call(path, "guest-ping", timeout_s=1.0)
            return True
        except (OSError, ProtocolError, ValueError):
            time.sleep(0.1)
    return False


def qmp_call(path: Path, command: str, arguments: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
    conn = LineSocket(path, timeout_s)
    try:
        conn.receive()  # the greeting
        conn.send({"execute": "qmp_capabilities"})
        result_of(conn.receive(), "qmp_capabilities")
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        conn.send(message)
        while True:
            answer = conn.receive()
            if "event" not in answer:
                return result_of(answer, command)
    finally:
        conn.close()
