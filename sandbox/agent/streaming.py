"""A running command's output, sent to the host while it runs (stdlib only).

When a request asks for it, the agent sends the command's new complete lines
of stdout and stderr as extra frames before the answer (``{"id", "output":
[{"stream", "blob"}]}``), at most one frame every ``INTERVAL_S``, so a chatty
program costs a few frames a second, not one per line. A line longer than
``LONG_LINE`` goes out without waiting for its end. Only the bytes the answer
itself keeps (the first ``max_output`` of each stream) are sent, so what was
streamed is always the start of the answer's output: the host sends the rest
from the answer, and the pieces add up to it exactly.
"""

from __future__ import annotations

import time

INTERVAL_S = 0.1
LONG_LINE = 8192


class Streamer:
    def __init__(self, emit, limit: int) -> None:
        self.emit = emit  # emit([(stream name, bytes), ...]); raises OSError once the host is gone
        self.limit = limit
        self.pending = {"stdout": bytearray(), "stderr": bytearray()}
        self.taken = {"stdout": 0, "stderr": 0}  # bytes of each stream taken in (sent or pending)
        self.last = 0.0
        self.broken = False

    def feed(self, stream: str, chunk: bytes) -> None:
        room = self.limit - self.taken[stream]
        if room > 0 and not self.broken:
            piece = chunk[:room]
            self.pending[stream] += piece
            self.taken[stream] += len(piece)

    def tick(self) -> None:
        """Send the complete lines gathered, unless a frame went out less than INTERVAL_S ago."""
        now = time.monotonic()
        if self.broken or now - self.last < INTERVAL_S:
            return
        parts = []
        for stream, pending in self.pending.items():
            end = pending.rfind(b"\n") + 1
            if not end and len(pending) >= LONG_LINE:
                end = len(pending)
            if end:
                parts.append((stream, bytes(pending[:end])))
                del pending[:end]
        if not parts:
            return
        self.last = now
        try:
            self.emit(parts)
        except OSError:
            self.broken = True
