"""Channels: durable FIFO messages between a tenant's agents, with leases, acks,
redelivery and dead letters.

    send ──▶ stored (one transaction: the message, the channel's counters, its
             storage lease, the dedupe key, the NOTIFY) ──▶ the channel's bell rings
    receive ──▶ lease the oldest visible messages (a receipt each) ──▶ ack deletes them
                └─ no ack within the lease: delivered again, its count one higher;
                   past the channel's max_deliveries it moves to the dead letters

A waiting receive sleeps on its channel's bell (``skills.channel.wakeups``) and on
the end of the first lease that may make a message visible again: no loop polls
the store. Messages live in the store, so they survive restarts, receipts too.

A channel pays a fee per op and, on a lease (``scheduler.leases``), for the MiB it
stores (the most since the reaper's last pass: ``scheduler.storage_leases``).
**At budget**: when the budget cannot cover the next lease, the channel is *stopped*:
its billing ends then, its messages are kept, sends are refused; receives, acks,
lists, describes and deletes still work (they can only lower what it stores). The
next send the budget covers starts its billing again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import anyio
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import BackendUnavailable, InvalidInput, NotFound, QuotaExceeded
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.storage_leases import MIB, StorageLease
from scheduler.store import Store
from scheduler.tasks import new_id
from skills.base import Platform
from skills.channel import queue
from skills.channel.limits import QUOTA, limits_of
from skills.channel.queue import DEAD, READY, Claimed, Stats
from skills.channel.rows import Channel, ChannelDedupe, ChannelMessage
from skills.channel.wakeups import Bells, Notifier, notifier_for

log = logging.getLogger("cloudskills.channels")

KIND = "channel"
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_RETENTION_S = 4 * 86400
# Two first sends to one name, or two sends of one dedupe key, racing on PostgreSQL:
# the loser's insert fails on the unique index and its send runs again, then finds the winner's.
SEND_ATTEMPTS = 3


def bell(tenant_id: str, name: str) -> str:
    """A tenant's channel by name: waiters may wait on one no one has sent to yet."""
    return f"{tenant_id}:{name}"


def overbilled() -> ColumnElement[bool]:
    """Live channels whose lease bills a MiB or more that they no longer store."""
    return (Channel.state == "live") & (Channel.billed_mib * MIB - Channel.stored_bytes >= MIB)


@dataclass(frozen=True)
class Sent:
    message_id: str
    channel_id: str
    duplicate: bool


@dataclass(frozen=True)
class ChannelView:
    row: Channel
    stats: Stats


class ChannelManager:
    kind = KIND

    def __init__(self, store: Store, leases: Leases, notifier: Notifier, max_waiting: int = 8) -> None:
        self.store = store
        # A channel's storage: a send refused for money; what acks and expiries free billed
        # less on the reaper's next pass (``settle``), never refused.
        stopped = "channel {name} is stopped, its messages kept, because the budget ran out"
        self.storage = StorageLease(leases, KIND, "channel.storage_mib_ms", stopped)
        self.notifier = notifier
        self.bells = Bells()
        # Receives waiting at once in this process: each holds one of the scheduler's
        # slots, so past this many a receive answers at once instead of waiting.
        self.max_waiting = max_waiting
        self._waiting = 0

    # -- the ops -------------------------------------------------------------

    def create(self, tenant_id: str, name: str, max_deliveries: int, retention_s: int) -> tuple[ChannelView, bool]:
        """The channel, made with these settings if it did not exist; True if it was made."""
        with self.store.transaction() as session:
            row = self._find(session, tenant_id, name)
            made = row is None
            if row is None:
                row = self._make(session, tenant_id, name, max_deliveries, retention_s)
            elif (row.max_deliveries, row.retention_s) != (max_deliveries, retention_s):
                raise InvalidInput(
                    f"channel {name!r} exists with max_deliveries={row.max_deliveries} and "
                    f"retention_s={row.retention_s}: use it as it is, or channel_delete it first."
                )
            return ChannelView(row, queue.stats(session, [row.id], utcnow()).get(row.id, queue.EMPTY)), made

    def send(self, tenant_id: str, name: str, body: str, agent: str | None, dedupe_key: str | None) -> Sent:
        """Store one message (making the channel on its first send) and wake its receivers."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                with self.store.transaction() as session:
                    sent = self._send(session, tenant_id, name, body, agent, dedupe_key)
                break
            except IntegrityError as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    raise BackendUnavailable("the store stayed too busy to take this message: send it again.") from exc
        if not sent.duplicate:
            self.bells.ring(bell(tenant_id, name))
        return sent

    def _send(self, session: Session, tenant_id: str, name: str, body: str, agent: str | None, key: str | None) -> Sent:
        limits = limits_of(session, tenant_id)
        size, most = len(body.encode()), limits.message_bytes
        if size > most:
            raise InvalidInput(
                f"the body is {size} bytes of JSON, more than the {most} a message may carry: send less, "
                "or keep the data elsewhere (a database) and send where it is."
            )
        channel = queue.find(session, tenant_id, name, lock=True)
        if channel is None:
            self._make(session, tenant_id, name, DEFAULT_MAX_DELIVERIES, DEFAULT_RETENTION_S)
            channel = queue.find(session, tenant_id, name, lock=True)
            assert channel is not None
        now = utcnow()
        if key is not None:
            seen = session.connection().execute(queue.SEEN, {"channel_id": channel.id, "key": key}).one_or_none()
            if seen is not None and seen.expires_at > now:
                return Sent(seen.message_id, channel.id, duplicate=True)
            if seen is not None:
                session.connection().execute(queue.FORGET, {"channel_id": channel.id, "key": key})
        if channel.stored_count >= limits.max_channel_depth:
            raise QuotaExceeded(
                f"channel {name!r} holds {channel.stored_count} messages, your quota's most: receive and "
                "channel_ack some (dead letters too: receive them with dead_letters), then retry."
            )
        message_id, expires = new_id("msg"), now + timedelta(seconds=channel.retention_s)
        message = {
            "id": message_id,
            "channel_id": channel.id,
            "tenant_id": tenant_id,
            "body": body,
            "size_bytes": size,
            "sender_agent": agent,
            "state": queue.READY,
            "deliveries": 0,
            "visible_at": now,
            "sent_at": now,
            "expires_at": expires,
        }
        session.connection().execute(queue.INSERT_MESSAGE, message)
        session.connection().execute(queue.STORED, {"channel_id": channel.id, "count": 1, "bytes": size})
        if channel.state == "stopped" or -(-(channel.stored_bytes + size) // MIB) > channel.billed_mib:
            row = session.get(Channel, channel.id, populate_existing=True)
            assert row is not None
            self.storage.charge(session, row)  # the lease's rate changes: rare, so through the ORM
        if key is not None:
            remembered = {"channel_id": channel.id, "dedupe_key": key, "message_id": message_id, "expires_at": expires}
            session.connection().execute(queue.REMEMBER, remembered)
        self.notifier.announce(session, bell(tenant_id, name))
        return Sent(message_id, channel.id, duplicate=False)

    async def receive(
        self, tenant_id: str, name: str, max_messages: int, wait_s: float, lease_s: float, dead_letters: bool = False
    ) -> list[Claimed]:
        """Lease up to ``max_messages``; with none there, wait up to ``wait_s`` for a send
        (or for a lease to run out) and take what it brings."""
        key = bell(tenant_id, name)
        deadline = anyio.current_time() + (0.0 if dead_letters else wait_s)
        while True:
            with self.bells.listening(key) as rung:
                messages, visible_in = self._claim(tenant_id, name, max_messages, lease_s, dead_letters)
                now = anyio.current_time()
                if messages or now >= deadline or self._waiting >= self.max_waiting:
                    return messages
                until = deadline if visible_in is None else min(deadline, now + visible_in)
                self._waiting += 1
                try:
                    with anyio.move_on_after(until - now):
                        await rung.wait()
                finally:
                    self._waiting -= 1

    def _claim(
        self, tenant_id: str, name: str, max_messages: int, lease_s: float, dead_letters: bool
    ) -> tuple[list[Claimed], float | None]:
        """The messages leased now, and else the seconds until a lease ends (None: no lease)."""
        with self.store.transaction() as session:
            channel = queue.find(session, tenant_id, name)
            if channel is None:
                return [], None
            now = utcnow()
            claimed = queue.claim(session, channel.id, channel.max_deliveries, now, max_messages, lease_s, dead_letters)
            if claimed:
                return claimed, None
            ends = queue.next_visible(session, channel.id, now, dead_letters)
            return [], None if ends is None else max((ends - now).total_seconds(), 0.0)

    def ack(self, tenant_id: str, name: str, receipts: list[str]) -> tuple[int, list[str]]:
        """Delete the messages of these receipts; the count deleted and the receipts that
        matched none (acked already, or delivered again since: their lease ran out).
        What they stored is billed until the reaper's next pass (see scheduler.storage_leases)."""
        with self.store.transaction() as session:
            channel = queue.find(session, tenant_id, name, lock=True)
            if channel is None:
                raise NotFound(f"no channel {name!r}: channel_list shows yours; channel_send makes one.")
            rows = session.connection().execute(queue.RECEIPTED, {"channel_id": channel.id, "receipts": receipts}).all()
            if rows:
                session.connection().execute(queue.REMOVE, {"seqs": [row.seq for row in rows]})
                freed = {"channel_id": channel.id, "count": -len(rows), "bytes": -sum(row.size_bytes for row in rows)}
                session.connection().execute(queue.STORED, freed)
        matched = {row.receipt for row in rows}
        return len(rows), [receipt for receipt in receipts if receipt not in matched]

    def list_live(self, tenant_id: str) -> list[ChannelView]:
        with self.store.transaction() as session:
            rows = list(
                session.scalars(
                    select(Channel)
                    .where(Channel.tenant_id == tenant_id, queue.LIVE)
                    .order_by(Channel.created_at, Channel.name)
                )
            )
            found = queue.stats(session, [row.id for row in rows], utcnow())
            return [ChannelView(row, found.get(row.id, queue.EMPTY)) for row in rows]

    def describe(self, tenant_id: str, name: str) -> ChannelView:
        with self.store.transaction() as session:
            row = self._get(session, tenant_id, name)
            return ChannelView(row, queue.stats(session, [row.id], utcnow()).get(row.id, queue.EMPTY))

    def delete(self, tenant_id: str, name: str) -> bool:
        """Delete a channel and all its messages, billing its storage up to now; False if
        there was no such channel (deleting twice is fine)."""
        with self.store.transaction() as session:
            channel = self._find(session, tenant_id, name, lock=True)
            if channel is None:
                return False
            session.execute(delete(ChannelMessage).where(ChannelMessage.channel_id == channel.id))
            session.execute(delete(ChannelDedupe).where(ChannelDedupe.channel_id == channel.id))
            self.storage.stop(session, channel, "deleted")
            channel.state, channel.deleted_at = "deleted", utcnow()
            channel.stored_count = channel.stored_bytes = 0
        return True

    # -- rows and money ------------------------------------------------------

    def _find(self, session: Session, tenant_id: str, name: str, lock: bool = False) -> Channel | None:
        query = select(Channel).where(Channel.tenant_id == tenant_id, Channel.name == name, queue.LIVE)
        return session.scalar(query.with_for_update() if lock else query)

    def _get(self, session: Session, tenant_id: str, name: str) -> Channel:
        """This tenant's channel; another tenant's looks exactly like a missing one."""
        row = self._find(session, tenant_id, name)
        if row is None:
            raise NotFound(f"no channel {name!r}: channel_list shows yours; channel_send makes one.")
        return row

    def _make(self, session: Session, tenant_id: str, name: str, max_deliveries: int, retention_s: int) -> Channel:
        QUOTA.check(session, tenant_id)
        limits = limits_of(session, tenant_id)
        if retention_s > limits.max_channel_retention_s:
            raise InvalidInput(
                f"retention_s {retention_s} is past your quota's most, {limits.max_channel_retention_s} s: "
                "ask for less."
            )
        row = Channel(
            id=new_id("ch"),
            tenant_id=tenant_id,
            name=name,
            state="live",
            max_deliveries=max_deliveries,
            retention_s=retention_s,
            stored_count=0,
            stored_bytes=0,
            billed_mib=0,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()  # a racing first send fails here, on the unique name, and is run again
        return row

    # -- the kind's duties -----------------------------------------------------

    async def recover(self) -> list[str]:
        """Nothing to settle after a restart: every change is one transaction of the store,
        and messages in flight keep their leases and receipts."""
        return []

    async def reap(self) -> list[str]:
        """Remove messages past their channel's retention and dedupe keys past their window;
        move to the dead letters the messages whose last allowed lease ran out; bill the
        storage acks and expiries freed. The ids of the channels whose storage changed."""
        now = utcnow()
        with self.store.transaction() as session:
            expired = set(session.scalars(select(ChannelMessage.channel_id).where(ChannelMessage.expires_at <= now)))
        for channel_id in sorted(expired):
            with self.store.transaction() as session:
                session.get(Channel, channel_id, with_for_update=True)  # counters move under the channel's lock
                rows = session.connection().execute(queue.EXPIRED, {"channel_id": channel_id, "now": now}).all()
                session.connection().execute(queue.REMOVE, {"seqs": [row.seq for row in rows]})
                freed = {"channel_id": channel_id, "count": -len(rows), "bytes": -sum(row.size_bytes for row in rows)}
                session.connection().execute(queue.STORED, freed)
        most = select(Channel.max_deliveries).where(Channel.id == ChannelMessage.channel_id).scalar_subquery()
        with self.store.transaction() as session:
            session.execute(
                update(ChannelMessage)
                .where(ChannelMessage.state == READY, ChannelMessage.receipt.is_not(None))
                .where(ChannelMessage.visible_at <= now, ChannelMessage.deliveries >= most)
                .values(state=DEAD, dead_at=now)
            )
            session.execute(delete(ChannelDedupe).where(ChannelDedupe.expires_at <= now))
            smaller = list(session.scalars(select(Channel.id).where(overbilled())))
        for channel_id in smaller:
            with self.store.transaction() as session:
                channel = session.get(Channel, channel_id, with_for_update=True)
                if channel is not None:
                    self.storage.settle(session, channel)
        return sorted(expired | set(smaller))

    async def stop_for_budget(self, resource_id: str) -> None:
        """The budget could not renew the channel's lease (its billing has ended): refuse
        sends until one is covered again; receives, acks and deletes go on."""
        with self.store.transaction() as session:
            row = session.get(Channel, resource_id, with_for_update=True)
            if row is not None and row.state == "live":
                row.state, row.billed_mib = "stopped", 0

    async def serve(self) -> None:
        """While the process serves: hear the sends of the other processes on the store."""
        await self.notifier.listen(self.bells)


def from_platform(platform: Platform) -> ChannelManager:
    """Channels in the process's own store; sends heard across replicas when it is PostgreSQL."""
    waiting = max(1, platform.scheduler.concurrency // 2)
    return ChannelManager(platform.store, platform.leases, notifier_for(platform.store.url), waiting)
