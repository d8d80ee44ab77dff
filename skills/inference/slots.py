"""A bounded set of engine slots shared fairly across tenants.

A slot is one thing that can serve one request at a time (a loaded model
context, or one connection's worth of a remote endpoint). When all are busy,
requests wait in one queue per tenant, and a freed slot goes to the next
tenant in turn: a tenant with a hundred queued requests delays another's one
request by at most one request per slot, not a hundred.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
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
        # The slots each tenant holds (a tenant with none has no key).
        self.held: Counter[str] = Counter()
        # Told of each tenant that starts to wait while no slot is free: an engine that can
        # take a slot back from another tenant (``LlamaEngine``'s lanes) does it here.
        self.on_wait: Callable[[str], None] | None = None

    def queued(self, tenant: str | None = None) -> int:
        """The requests waiting for a slot: ``tenant``'s, or everyone's."""
        if tenant is not None:
            return len(self.waiting.get(tenant, ()))
        return sum(len(q) for q in self.waiting.values())

    @asynccontextmanager
    async def slot(self, tenant: str, affinity: Callable[[S], int] | None = None) -> AsyncIterator[S]:
        """A slot for the duration; among free slots, the one ``affinity`` scores highest
        (a model context already holding the request's prompt prefix)."""
        taken = await self.acquire(tenant, affinity)
        try:
            yield taken
        finally:
            self.release(taken, tenant)

    async def acquire(self, tenant: str, affinity: Callable[[S], int] | None = None, first: bool = False) -> S:
        """A slot, held until ``release``; ``first``: ahead of the tenant's other waiters (a
        request that had one and gave it up, and waits to go on)."""
        if self.free and not self.waiting:
            best = max(self.free, key=affinity) if affinity else self.free[-1]
            self.free.remove(best)
            self.held[tenant] += 1
            return best
        waiter: Waiter[S] = Waiter()
        queue = self.waiting.setdefault(tenant, deque())
        if first:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        if self.on_wait is not None:
            self.on_wait(tenant)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.slot is not None:  # handed a slot just as it was cancelled: pass it on
                self.release(waiter.slot, tenant)
            else:
                mine = self.waiting.get(tenant)
                if mine is not None and waiter in mine:
                    mine.remove(waiter)
                    if not mine:
                        del self.waiting[tenant]
            raise
        assert waiter.slot is not None
        return waiter.slot

    def release(self, slot: S, tenant: str, to: str | None = None) -> None:
        """Give ``tenant``'s slot back: to the next waiter of tenant ``to`` when it has one
        (the tenant it was taken back for), else to the tenant whose turn it is."""
        self.held[tenant] -= 1
        if self.held[tenant] <= 0:
            del self.held[tenant]
        if not self.waiting:
            self.free.append(slot)
            return
        # The tenant at the head of the turn order is served, then goes to the back.
        served = to if to is not None and to in self.waiting else next(iter(self.waiting))
        queue = self.waiting.pop(served)
        waiter = queue.popleft()
        if queue:
            self.waiting[served] = queue
        self.held[served] += 1
        waiter.slot = slot
        waiter.event.set()
