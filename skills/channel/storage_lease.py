"""A channel's storage on a lease (``scheduler.leases``): the MiB it stores, every MiB
begun counted whole, billed from its first byte to its last.

The lease's rate changes with what the channel stores, in the transaction that
changes it. A send is refused when the budget cannot cover the lease it needs; an
ack, an expiry or a delete never is: when even the smaller lease cannot be held,
the channel is stopped (billing ends, its messages are kept), as the renewal loop
stops it when a lease cannot be renewed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.errors import BudgetExceeded
from scheduler.leases import Leases
from scheduler.pricing import Usage
from skills.channel.rows import Channel

METER = "channel.storage_mib_ms"
MIB = 1 << 20


def stored_mib(channel: Channel) -> int:
    return -(-channel.stored_bytes // MIB)


class StorageLease:
    def __init__(self, leases: Leases, kind: str) -> None:
        self.leases = leases
        self.kind = kind

    def bill(self, session: Session, channel: Channel, may_refuse: bool) -> None:
        """Bill what ``channel`` stores now (after a change in this transaction)."""
        mib = stored_mib(channel)
        if channel.state == "stopped":
            if not may_refuse:
                return  # billing ended; the next send the budget covers starts it again
            try:
                self._set_rate(session, channel, mib)
            except BudgetExceeded as exc:
                raise BudgetExceeded(
                    f"channel {channel.name!r} is stopped, its messages kept, because the budget ran out; "
                    f"{exc.message[0].lower()}{exc.message[1:]}"
                ) from exc
            channel.state = "live"
            return
        if mib == channel.billed_mib:
            return
        if may_refuse:
            self._set_rate(session, channel, mib)
            return
        try:
            with session.begin_nested():
                self._set_rate(session, channel, mib)
        except BudgetExceeded:
            self.stop(session, channel, "budget")

    def stop(self, session: Session, channel: Channel, reason: str) -> None:
        """End the channel's billing now (``budget``: it is stopped; ``deleted``)."""
        self.leases.close(session, channel.id, reason)
        channel.billed_mib = 0
        if reason == "budget":
            channel.state = "stopped"

    def _set_rate(self, session: Session, channel: Channel, mib: int) -> None:
        if mib == 0:
            self.leases.close(session, channel.id, "empty")
        else:
            self.leases.set_rate(
                session,
                kind=self.kind,
                resource_id=channel.id,
                tenant_id=channel.tenant_id,
                op="storage",
                per_s=Usage.of({METER: mib * 1000}),
            )
        channel.billed_mib = mib
