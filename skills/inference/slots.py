"""A bounded set of engine slots shared fairly across tenants.

A slot is one thing that can serve one request at a time (a loaded model
context, or one connection's worth of a remote endpoint). When all are busy,
requests wait in one queue per tenant, and a freed slot goes to the next
tenant in turn: a tenant with a hundred queued requests delays another's one
request by at most one request per slot, not a hundred.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio

S = TypeVar("S")


class Waiter(Generic[S]):
    def __init__(self) -> None:
        self.event = anyio.Event()
        self.slot: S | None = None


class FairSlots(Generic[S]):
    def __init__(self, slots: list[S]) -> None:
        self.free: list[S] = list(slots)
        self.size = len(slots)
        # Tenants in turn order, each with its waiters in arrival order.
        self.waiting: OrderedDict[str, deque[Waiter[S]]] = OrderedDict()

    def queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    @asynccontextmanager
    async def slot(self, tenant: str, affinity: Callable[[S], int] | None = None) -> AsyncIterator[S]:
        """A slot for the duration; among free slots, the one ``affinity`` scores highest
        (a model context already holding the request's prompt prefix)."""
        taken = await self._acquire(tenant, affinity)
        try:
            yield taken
        finally:
            self._release(taken)

    async def _acquire(self, tenant: str, affinity: Callable[[S], int] | None) -> S:
        if self.free and not self.waiting:
            best = max(self.free, key=affinity) if affinity else self.free[-1]
            self.free.remove(best)
            return best
        waiter: Waiter[S] = Waiter()
        self.waiting.setdefault(tenant, deque()).append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.slot is not None:  # handed a slot just as it was cancelled: pass it on
                self._release(waiter.slot)
            else:
                queue = self.waiting.get(tenant)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self.waiting[tenant]
            raise
        assert waiter.slot is not None
        return waiter.slot

    def _release(self, slot: S) -> None:
        if not self.waiting:
            self.free.append(slot)
            return
        # The tenant at the head of the turn order is served, then goes to the back.
        tenant, queue = next(iter(self.waiting.items()))
        waiter = queue.popleft()
        del self.waiting[tenant]
        if queue:
            self.waiting[tenant] = queue
        waiter.slot = slot
        waiter.event.set()
