"""A channel to a sandbox's resident agent over the container's attached stdio.

The agent is the container's entry process. The host attaches to its stdin
and stdout once (Docker's attach API, so a remote engine works the same) and
then each request is one line of ASCII JSON in and one length-prefixed JSON
frame out: no ``docker exec``, no process start, one pipe round trip.

Docker multiplexes the attached stdout and stderr onto one socket, each chunk
with an 8-byte header (stream, size). The agent's answers are framed again
inside stdout, so a frame may span chunks or share one with the next.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from typing import Any

from common.errors import TaskFailed

MAX_FRAME_BYTES = 64 << 20
STDOUT = 1


class ChannelBroken(Exception):
    """The attach connection failed; the sandbox is probably gone."""


class Channel:
    """One attached connection; calls on it are serialized (one request at a time)."""

    def __init__(self, sock: socket.socket, owner: object = None) -> None:
        self._sock = sock
        self._owner = owner  # what the SDK wrapped the socket in: kept alive with it
        self._lock = threading.Lock()
        self._stdout = bytearray()  # demultiplexed stdout not yet consumed
        self._stderr_tail = bytearray()
        self._next_id = 0
        self.closed = False

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            if self.closed:
                raise ChannelBroken("the channel is closed")
            self._next_id += 1
            request_id = self._next_id
            # One line of ASCII JSON (control characters escaped): Docker scans the
            # attached stdin for detach keys, so a binary frame could end the stream.
            line = json.dumps({**payload, "id": request_id}, ensure_ascii=True).encode() + b"\n"
            try:
                self._sock.settimeout(timeout_s)
                self._sock.sendall(line)
                while True:
                    answer = json.loads(self._read_frame())
                    # Another process attached to the same sandbox sees our answers too,
                    # and we see its: keep only ours.
                    if answer.get("id") == request_id:
                        return dict(answer)
            except TimeoutError as exc:
                self.close()
                raise TaskFailed("the sandbox stopped answering: destroy it and create a new one.") from exc
            except (OSError, ValueError) as exc:
                self.close()
                raise ChannelBroken(str(exc)) from exc

    def _read_frame(self) -> bytes:
        header = self._take(4)
        size = struct.unpack(">I", header)[0]
        if size > MAX_FRAME_BYTES:
            raise ValueError("the sandbox sent more than it may")
        return self._take(size)

    def _take(self, size: int) -> bytes:
        while len(self._stdout) < size:
            self._read_chunk()
        data = bytes(self._stdout[:size])
        del self._stdout[:size]
        return data

    def _read_chunk(self) -> None:
        stream, size = struct.unpack(">BxxxL", self._recv_exactly(8))
        data = self._recv_exactly(size)
        if stream == STDOUT:
            self._stdout.extend(data)
        else:
            self._stderr_tail = (self._stderr_tail + data)[-4096:]

    def _recv_exactly(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(min(size - len(chunks), 1 << 20))
            if not chunk:
                tail = self._stderr_tail.decode(errors="replace").strip().splitlines()[-1:]
                raise OSError(f"the sandbox's agent exited ({tail[0][:200] if tail else 'no message'})")
            chunks.extend(chunk)
        return bytes(chunks)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            # shutdown() first: it wakes a recv() blocked in another thread; close() alone does not.
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
