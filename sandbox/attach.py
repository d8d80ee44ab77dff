"""A channel to a sandbox's resident agent over the container's attached stdio.

The agent is the container's entry process. The host attaches to its stdin
and stdout once (Docker's attach API, so a remote engine works the same) and
then each request is one line of ASCII JSON and its raw blobs in, and one
length-prefixed JSON frame and its raw blobs out (``sandbox/agent/wire.py``):
no ``docker exec``, no process start, one pipe round trip. Without a TTY,
Docker passes the attached stdin through byte for byte (detach keys are only
scanned on a TTY), so blobs need no escaping.

Docker multiplexes the attached stdout and stderr onto one socket, each chunk
with an 8-byte header (stream, size). The agent's answers are framed again
inside stdout, so a frame may span chunks or share one with the next.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from common.errors import TaskFailed
from sandbox.driver import OutputSink

log = logging.getLogger("cloudskills.docker")

# The most one answer may carry (its header and blobs together).
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

    def request(
        self,
        payload: dict[str, Any],
        timeout_s: float,
        blobs: list[bytes] | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request (its header and blobs) and wait for its answer and the answer's blobs;
        output frames the agent sends before it (a streamed command's) go to ``on_output``."""
        with self._lock:
            if self.closed:
                raise ChannelBroken("the channel is closed")
            self._next_id += 1
            request_id = self._next_id
            blobs = blobs or []
            header = {**payload, "id": request_id, "blobs": [len(blob) for blob in blobs]}
            line = json.dumps(header, ensure_ascii=True).encode() + b"\n"
            try:
                self._sock.settimeout(timeout_s)
                self._sock.sendall(line)
                for blob in blobs:
                    self._sock.sendall(blob)
                while True:
                    answer, answer_blobs = read_answer(self._take)
                    # Another process attached to the same sandbox sees our answers too,
                    # and we see its: keep only ours.
                    if answer.get("id") != request_id:
                        continue
                    if "output" not in answer:
                        return answer, answer_blobs
                    if on_output is not None:
                        for part in answer["output"]:
                            on_output(str(part["stream"]), answer_blobs[int(part["blob"])])
            except TimeoutError as exc:
                self.close()
                raise TaskFailed("the sandbox stopped answering: destroy it and create a new one.") from exc
            except (OSError, ValueError) as exc:
                self.close()
                raise ChannelBroken(str(exc)) from exc

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
            self._stdout += data
        else:
            self._stderr_tail = (self._stderr_tail + data)[-4096:]

    def _recv_exactly(self, size: int) -> bytearray:
        chunks = bytearray(size)
        view, got = memoryview(chunks), 0
        while got < size:
            n = self._sock.recv_into(view[got:], size - got)
            if not n:
                tail = self._stderr_tail.decode(errors="replace").strip().splitlines()[-1:]
                raise OSError(f"the sandbox's agent exited ({tail[0][:200] if tail else 'no message'})")
            got += n
        return chunks

    def close(self) -> None:
        """Let go of the sandbox: a sandbox still held by this process (a warm one) ends at once."""
        self.closed = True
        with contextlib.suppress(OSError):
            # shutdown() first: it wakes a recv() blocked in another thread; close() alone does not.
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()


def read_answer(take: Callable[[int], bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """One answer and its blobs, read with ``take(n)`` (n bytes, whole)."""
    size = struct.unpack(">I", take(4))[0]
    if size > MAX_FRAME_BYTES:
        raise ValueError("the sandbox sent more than it may")
    answer = json.loads(take(size))
    if not isinstance(answer, dict):
        raise ValueError("the sandbox's answer is not a JSON object")
    sizes = [int(n) for n in answer.get("blobs") or []]
    if any(n < 0 for n in sizes) or sum(sizes) > MAX_FRAME_BYTES:
        raise ValueError("the sandbox sent more than it may")
    return answer, [take(n) for n in sizes]


def answer_in(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The answer a relay printed, and its blobs."""
    stream = io.BytesIO(data)

    def exact(size: int) -> bytes:
        part = stream.read(size)
        if len(part) < size:
            raise EOFError("the answer ended early")
        return part

    return read_answer(exact)


def read_stream(raw: socket.socket) -> tuple[bytes, bytes]:
    """Read Docker's multiplexed exec stream (8-byte header per chunk) to its end."""
    out, err = bytearray(), bytearray()
    while header := recv_exactly(raw, 8):
        stream, size = struct.unpack(">BxxxL", header)
        (out if stream == 1 else err).extend(recv_exactly(raw, size))
        if len(out) + len(err) > MAX_FRAME_BYTES:
            raise TaskFailed("the sandbox sent more than it may: ask for less output and try again.")
    return bytes(out), bytes(err)


def recv_exactly(raw: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = raw.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            break
        chunks.extend(chunk)
    return bytes(chunks)


class StreamedOutput:
    """Passes streamed output on, counting it, and never raises into the channel (a
    listener that fails is dropped: the channel must still read the answer)."""

    def __init__(self, sink: OutputSink) -> None:
        self.sink: OutputSink | None = sink
        self.sent = {"stdout": 0, "stderr": 0}

    def __call__(self, stream: str, data: bytes) -> None:
        if self.sink is None or stream not in self.sent or not data:
            return
        self.sent[stream] += len(data)
        try:
            self.sink(stream, data)
        except Exception:  # the caller went away (cancelled): nobody listens any more
            log.debug("a streamed output's listener failed", exc_info=True)
            self.sink = None

    def finish(self, stdout: bytes, stderr: bytes) -> None:
        """What the answer holds beyond what was streamed."""
        for stream, data in (("stdout", stdout), ("stderr", stderr)):
            self(stream, data[self.sent[stream] :])
