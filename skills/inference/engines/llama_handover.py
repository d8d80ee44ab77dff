"""How a batch engine's decoding thread hands text to the event loops waiting for it,
without waiting for them.

Waking asyncio's event loop from another thread (``call_soon_threadsafe``) writes to
the loop's self-pipe, and that write lets go of the GIL. The loop, woken, takes the GIL
then and runs what was handed over (every caller's text, an SSE write or an MCP
notification each) until its own next system call, while the decoding thread, back
from the write, waits for the GIL before it can start the next step: 0.4 ms a step on
average at 4 requests (2 cores), and a hand-over every step for a request alone.
(uvloop's wake keeps the GIL: on the server's default loop this thread saves less,
and costs a thread wake a hand-over.)

So the decoding thread only queues the text (``queue.SimpleQueue.put``: no system call
that lets go of the GIL), and a thread of this module's wakes the loops. That thread
gets the GIL when the decoding thread lets go of it for ``llama_decode``: the loop runs
while the model decodes, never between two of its steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")

log = logging.getLogger("cloudskills.inference")


class Handover(Generic[Item]):
    """One thread that calls ``deliver(items)`` on each loop that ``put`` names, in order.
    Its thread starts with the first ``put``; one thread puts, and closes."""

    def __init__(self, deliver: Callable[[list[Item]], None], name: str = "llama-handover") -> None:
        self._deliver = deliver
        self._queue: queue.SimpleQueue[list[tuple[asyncio.AbstractEventLoop, list[Item]]] | threading.Event | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._direct = False  # no thread could be started: the putting thread wakes the loops

    def put(self, by_loop: list[tuple[asyncio.AbstractEventLoop, list[Item]]]) -> None:
        """Queue items for their loops; returns at once, holding the GIL throughout."""
        if not self._started:
            self._started = True
            try:
                self._thread.start()
            except RuntimeError:  # "can't start new thread": slower, never lost
                log.warning("no thread to hand text over; the decoding thread wakes the event loops itself")
                self._direct = True
        if self._direct:
            self._wake(by_loop)
        else:
            self._queue.put(by_loop)

    def wait(self, timeout: float) -> bool:
        """Block until what was queued before has been handed to its loops (for tests)."""
        if not self._thread.is_alive():
            return True
        reached = threading.Event()
        self._queue.put(reached)
        return reached.wait(timeout)

    def close(self) -> None:
        """Hand over what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (by_loop := self._queue.get()) is not None:
            if isinstance(by_loop, threading.Event):
                by_loop.set()
                continue
            self._wake(by_loop)

    def _wake(self, by_loop: list[tuple[asyncio.AbstractEventLoop, list[Item]]]) -> None:
        for loop, items in by_loop:
            # A closed loop: nobody waits for these any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, items)
