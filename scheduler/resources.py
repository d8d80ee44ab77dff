"""What the process needs of a kind of resource that outlives its call.

A kind (whatever a skill keeps alive past a call) lives in its skill:
its rows, its manager, its engines. The process knows it only through this
small protocol, and finds it the way it finds ops (``Skill.resource``):

- **create** is the kind's own op; in its record's transaction it checks its
  ``LiveQuota`` and opens its lease (``scheduler.leases``): a hold for the
  first lease of its running cost, refused when the budget cannot cover it;
- **lease renewal** and **usage** are the lease's: the kind says what one
  second of the resource uses, and changes it (``Leases.rerate``) with its state;
- **stop at budget**: ``stop_for_budget`` when a lease could not be renewed;
  billing has already ended, the kind stops the resource (data kept where it has data);
- **recovery** after a restart and **reaping** of strays, TTLs and dead ones.

``ResourceDuties`` runs the periodic part (reaping and renewals) for every
kind in one loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import anyio
from sqlalchemy.orm import Session

from common.errors import CloudSkillsError, QuotaExceeded
from scheduler import ledger
from scheduler.leases import Leases
from scheduler.models import utcnow

log = logging.getLogger("cloudskills.resources")

T = TypeVar("T")


@dataclass(frozen=True)
class LiveQuota:
    """A per-tenant cap on how many of a kind live at once.

    ``name`` is the tenant setting (``max_live_<kind>s``), ``count`` counts
    the tenant's live ones in the caller's transaction, ``hint`` says how to
    free one."""

    name: str
    default: int
    noun: str
    hint: str
    count: Callable[[Session, str], int]

    def limit(self, tenant: Any) -> int:
        return int((tenant.quotas or {}).get(self.name, self.default))

    def check(self, session: Session, tenant_id: str) -> None:
        """Refuse one more when the tenant has its most; the tenant's row is locked
        for the rest of the transaction, so two creates cannot both pass."""
        tenant = ledger.locked_tenant(session, tenant_id)
        live = self.count(session, tenant_id)
        if live >= self.limit(tenant):
            raise QuotaExceeded(f"you have {live} live {self.noun}, your quota's most: {self.hint}, then retry.")


class ResourceKind(Protocol):
    """A manager of one kind of long-lived resource, as the process sees it."""

    kind: str

    async def recover(self) -> list[str]:
        """After a restart: settle what a dead process left half made; the ids handled."""
        ...

    async def reap(self) -> list[str]:
        """Remove what is past its TTL, dead, or stray; the ids handled."""
        ...

    async def stop_for_budget(self, resource_id: str) -> None:
        """Stop a resource whose lease the budget could not renew (its billing has ended)."""
        ...


class Services:
    """The process's services by type, so a handler asks for what it uses, typed:
    ``ctx.service(SomeManager)``."""

    def __init__(self) -> None:
        self._by_type: dict[type[Any], Any] = {}

    def add(self, service: object) -> None:
        self._by_type[type(service)] = service

    def get(self, kind: type[T]) -> T:
        found = self._by_type.get(kind)
        if found is None:
            found = next((s for t, s in self._by_type.items() if issubclass(t, kind)), None)
        if found is None:
            raise LookupError(f"no service {kind.__name__} in this process")
        assert isinstance(found, kind)
        return found

    def all(self) -> list[object]:
        return list(self._by_type.values())

    def kinds(self) -> list[ResourceKind]:
        return [s for s in self._by_type.values() if isinstance(getattr(s, "kind", None), str)]

    async def close_all(self) -> None:
        """Let every service that holds something open (a model's threads) close it."""
        for service in self._by_type.values():
            close = getattr(service, "aclose", None)
            if close is not None:
                await close()


class Every:
    """A chore done at most once every ``interval_s``, however often it is asked."""

    def __init__(self, interval_s: float, chore: Callable[[], object]) -> None:
        self.interval_s = interval_s
        self.chore = chore
        self._last = -float("inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.chore()


@dataclass(frozen=True)
class DutyPass:
    """One pass of ``ResourceDuties``, as an operator sees it: when, how long, what it did."""

    started_at: datetime
    seconds: float
    reaped: dict[str, int] = field(default_factory=dict)  # kind -> resources reaped
    stopped_for_budget: int = 0
    errors: tuple[str, ...] = ()


class ResourceDuties:
    """The periodic care of every kind: the store's chores, reap, then renew leases and
    stop the ones the budget no longer covers. The last passes are kept (``passes``) for the operator."""

    def __init__(
        self, kinds: Sequence[ResourceKind], leases: Leases, chores: Sequence[Callable[[], object]] = ()
    ) -> None:
        self.kinds = {kind.kind: kind for kind in kinds}
        self.leases = leases
        # Other periodic care of the store (settling dead servers' tasks, pruning old
        # task details), once a pass.
        self.chores = list(chores)
        self.passes: deque[DutyPass] = deque(maxlen=20)

    async def recover(self) -> list[str]:
        handled: list[str] = []
        for kind in self.kinds.values():
            handled += await kind.recover()
        return handled

    async def pass_once(self) -> list[str]:
        """One pass; the ids of the resources it stopped for money."""
        started, clock, reaped, errors = utcnow(), time.monotonic(), {}, []
        # Chores first: settling a dead server's tasks ends them, so this very pass
        # reaps their sandboxes instead of leaving them to the next one (or to no one,
        # if this server stops before it).
        for chore in self.chores:
            try:
                chore()
            except Exception as exc:  # a chore that fails (a locked store) must not stop the reaping
                name = getattr(chore, "__name__", type(chore).__name__)
                log.warning("chore %s failed: %s", name, exc)
                errors.append(f"chore {name}: {exc}")
        for kind in self.kinds.values():
            try:
                reaped[kind.kind] = len(await kind.reap())
            except CloudSkillsError as exc:
                log.warning("reaping %s: %s", kind.kind, exc)
                errors.append(f"reaping {kind.kind}: {exc.message}")
        stopped = []
        for ended in self.leases.renew_due():
            owner = self.kinds.get(ended.kind)
            if owner is None:
                continue  # a kind this process does not serve: its own process stops it
            try:
                await owner.stop_for_budget(ended.resource_id)
                stopped.append(ended.resource_id)
            except CloudSkillsError as exc:
                log.warning("could not stop %s %s for its budget: %s", ended.kind, ended.resource_id, exc)
                errors.append(f"stopping {ended.kind} {ended.resource_id}: {exc.message}")
        self.passes.append(DutyPass(started, time.monotonic() - clock, reaped, len(stopped), tuple(errors)))
        return stopped

    async def run(self, interval_s: float, leads: Callable[[], bool] = lambda: True) -> None:
        """A pass every ``interval_s`` while this process ``leads`` the duties (one replica at a time)."""
        while True:
            try:
                if not leads():
                    await anyio.sleep(interval_s)
                    continue
                stopped = await self.pass_once()
                if stopped:
                    log.info("stopped %d resource(s) their budget no longer covers", len(stopped))
            except Exception:
                # A background loop must never take the server down; the next pass retries.
                log.exception("resource duties pass failed")
            await anyio.sleep(interval_s)
