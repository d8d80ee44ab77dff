"""A namespace's storage on a lease (``scheduler.leases``): the MiB its memories take,
every MiB begun counted whole, billed from its first memory to its last.

The rate changes in the transaction that changes what the namespace stores. A
write is refused when the budget cannot cover the lease it needs; a delete or an
expiry never is: when even the smaller lease cannot be held, the namespace is
stopped (billing ends, its memories are kept and still read), as the renewal
loop stops it when a lease cannot be renewed. Its next write that the budget
covers starts billing again.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.errors import BudgetExceeded
from scheduler.leases import Leases
from scheduler.pricing import Usage
from skills.memory.rows import MemoryNamespace

KIND = "memory"
METER = "memory.storage_mib_ms"
MIB = 1 << 20


def stored_mib(namespace: MemoryNamespace) -> int:
    return -(-namespace.stored_bytes // MIB)


def per_second(mib: int) -> Usage:
    return Usage.of({METER: mib * 1000})


class StorageLease:
    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    def bill(self, session: Session, namespace: MemoryNamespace, may_refuse: bool) -> None:
        """Bill what ``namespace`` stores now (after a change in this transaction); with
        ``may_refuse`` (a write), raise ``BudgetExceeded`` when the budget cannot cover it."""
        mib = stored_mib(namespace)
        if namespace.state == "stopped":
            if not may_refuse:
                return  # billing ended; the next write the budget covers starts it again
            try:
                self._set_rate(session, namespace, mib)
            except BudgetExceeded as exc:
                raise BudgetExceeded(
                    f"memory namespace {namespace.name!r} is stopped, its memories kept and still readable, because "
                    f"the budget ran out; {exc.message[0].lower()}{exc.message[1:]}"
                ) from exc
            namespace.state = "live"
            return
        if mib == namespace.billed_mib:
            return
        if may_refuse:
            self._set_rate(session, namespace, mib)
            return
        try:
            with session.begin_nested():
                self._set_rate(session, namespace, mib)
        except BudgetExceeded:
            self.stop(session, namespace, "budget")

    def stop(self, session: Session, namespace: MemoryNamespace, reason: str) -> None:
        """End the namespace's billing now (``budget``: it is stopped; ``deleted``)."""
        self.leases.close(session, namespace.id, reason)
        namespace.billed_mib = 0
        if reason == "budget":
            namespace.state = "stopped"

    def _set_rate(self, session: Session, namespace: MemoryNamespace, mib: int) -> None:
        if mib == 0:
            self.leases.close(session, namespace.id, "empty")
        else:
            self.leases.set_rate(
                session,
                kind=KIND,
                resource_id=namespace.id,
                tenant_id=namespace.tenant_id,
                op="storage",
                per_s=per_second(mib),
            )
        namespace.billed_mib = mib
