"""A channel's storage on a lease (``scheduler.leases``): the MiB it stores, every MiB
begun counted whole.

A send that needs more MiB than the lease bills raises its rate at once, in the
send's transaction, and is refused when the budget cannot cover that lease. What
acks and expiries free is given back by the reaper's next pass (``settle``), so a
channel that empties and fills between passes (a waiting worker acking each job)
does not reopen its lease on every message: it pays for the most it stored since
the last pass. Settling never refuses: when even the smaller lease cannot be held,
the channel is stopped (billing ends, its messages are kept), as the renewal loop
stops it when a lease cannot be renewed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from common.errors import BudgetExceeded
from scheduler.leases import Leases
from scheduler.pricing import Usage
from skills.channel.rows import Channel

METER = "channel.storage_mib_ms"
MIB = 1 << 20


def stored_mib(channel: Channel) -> int:
    return -(-channel.stored_bytes // MIB)


def overbilled() -> ColumnElement[bool]:
    """Live channels whose lease bills a MiB or more that they no longer store."""
    return (Channel.state == "live") & (Channel.billed_mib * MIB - Channel.stored_bytes >= MIB)


class StorageLease:
    def __init__(self, leases: Leases, kind: str) -> None:
        self.leases = leases
        self.kind = kind

    def grow(self, session: Session, channel: Channel) -> None:
        """After a send: bill what the channel now stores, if more than its lease bills;
        a stopped channel starts billing again. Raises ``BudgetExceeded`` (the send's
        transaction then rolls back) when the budget cannot cover the lease."""
        mib = stored_mib(channel)
        if channel.state == "stopped":
            try:
                self._set_rate(session, channel, mib)
            except BudgetExceeded as exc:
                raise BudgetExceeded(
                    f"channel {channel.name!r} is stopped, its messages kept, because the budget ran out; "
                    f"{exc.message[0].lower()}{exc.message[1:]}"
                ) from exc
            channel.state = "live"
        elif mib > channel.billed_mib:
            self._set_rate(session, channel, mib)

    def settle(self, session: Session, channel: Channel) -> None:
        """Bill what the channel stores now, less than before; never refused."""
        mib = stored_mib(channel)
        if channel.state != "live" or mib == channel.billed_mib:
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
