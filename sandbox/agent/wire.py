"""How requests and answers travel between the host and the agent (stdlib only).

A request is one line of ASCII JSON followed by the raw bytes of its blobs
(file contents, a command's stdin), whose sizes the line lists in order
under ``"blobs"``. An answer is a 4-byte big-endian length, that much JSON,
then the raw bytes of the answer's blobs (files read, a command's output),
sized in its ``"blobs"``. Nothing is base64-encoded or copied whole: the
agent reads its input in large chunks into its own buffer (one ``read()`` per
chunk, never one per byte) and streams a written file to disk as it arrives.
"""

from __future__ import annotations

import json
import os
import struct

CHUNK = 1 << 20
# A request line bigger than this is refused: contents travel as blobs, not in the line.
MAX_LINE = 16 << 20


class Closed(Exception):
    """The stream ended in the middle of a request."""


class Reader:
    """Buffered reads from one file descriptor (stdin, or a relay's connection).

    After each ``fill`` the caller takes every complete line already in the
    buffer, so a request that arrived with the previous one is never left
    waiting for a ``select()`` that will not report it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.eof = False

    def fill(self) -> bool:
        """One read from the descriptor into the buffer; False at its end."""
        try:
            chunk = os.read(self.fd, CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def line(self) -> bytes | None:
        """The next complete line in the buffer, or None."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                raise ValueError("the request line is too long: send contents as blobs")
            return None
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line

    def read_line(self) -> bytes | None:
        """A whole line, reading until it has come (blocking); None at the end."""
        while True:
            line = self.line()
            if line is not None:
                return line
            if not self.fill():
                return None

    def stream(self, size: int, sink) -> None:
        """Pass the next ``size`` bytes to ``sink`` chunk by chunk (blocking)."""
        while size > 0:
            if not self.buffer and not self.fill():
                raise Closed("the request ended before its last blob")
            take = min(size, len(self.buffer), CHUNK)
            chunk = memoryview(self.buffer)[:take]
            try:
                sink(chunk)
            finally:
                # Released even if the sink kept it (in a traceback): the buffer must stay resizable.
                chunk.release()
            del self.buffer[:take]
            size -= take

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes, whole."""
        parts: list[bytes] = []
        self.stream(size, lambda chunk: parts.append(bytes(chunk)))
        return b"".join(parts)


def write_all(fd: int, parts: list) -> None:
    """Write every part, in order, with as few system calls as the kernel allows."""
    views = [memoryview(part) for part in parts if len(part)]
    while views:
        written = os.writev(fd, views[:512])
        while written and views:
            if written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0


def send_answer(fd: int, answer: dict, blobs: list) -> None:
    answer["blobs"] = [len(blob) for blob in blobs]
    header = json.dumps(answer).encode()
    write_all(fd, [struct.pack(">I", len(header)), header, *blobs])
