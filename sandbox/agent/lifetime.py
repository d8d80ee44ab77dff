"""When a sandbox ends by itself, whether or not any server is alive (stdlib only).

A sandbox starts *held*: by a server's warm pool, or by the server setting it
up. A held sandbox lives only while its server does: it exits as soon as the
attached stdin closes (the server's process ended, however it was killed) or
after ``hold_s`` seconds without a request (the server hangs; a live pool
sends a heartbeat well within that). Once a server hands it to a caller, a
request sets its *idle limit*: from then on it exits after that many seconds
without a request, whoever is left to send one, and outlives its server.

The exit code says which (the host reads it back as the container's).

A paused sandbox (checkpointed, then restored: ``sandbox/checkpoint.py``) wakes
with its monotonic clock moved on by the whole pause, so a wait for a request
ends long after it should have. That is a restore, not idleness: the clock
starts again, and the time paused never counts as idle.
"""

from __future__ import annotations

import os
import time

# Keep in sync with sandbox/docker.py.
EXIT_IDLE = 75  # idle past its limit: expired
EXIT_RELEASED = 76  # held, and its server went away
DEFAULT_HOLD_S = 10.0
# A wait that ends this much later than asked was frozen (the sandbox was paused).
FROZEN_AFTER_S = 2.0


class Lifetime:
    def __init__(self, hold_s: float | None = None) -> None:
        if hold_s is None:
            hold_s = float(os.environ.get("CLOUDSKILLS_HOLD_S") or DEFAULT_HOLD_S)
        self.hold_s = hold_s
        self.idle_s: float | None = None  # None while held
        self.last = time.monotonic()

    @property
    def held(self) -> bool:
        return self.idle_s is None

    def touch(self) -> None:
        """A request just ended: the clock starts again."""
        self.last = time.monotonic()

    def set_idle(self, idle_s: float) -> None:
        self.idle_s = max(float(idle_s), 0.0)

    def left(self) -> float:
        """Seconds until this sandbox ends unless a request comes."""
        limit = self.hold_s if self.idle_s is None else self.idle_s
        return max(self.last + limit - time.monotonic(), 0.0)

    def woke_late(self, asked_s: float, began: float) -> bool:
        """After a wait of ``asked_s`` begun at ``began`` (monotonic): whether it ended far
        later than asked, because the sandbox was paused meanwhile; if so, the idle clock
        starts again now."""
        if time.monotonic() - began <= asked_s + FROZEN_AFTER_S:
            return False
        self.touch()
        return True

    def exit_code(self) -> int:
        return EXIT_RELEASED if self.held else EXIT_IDLE
