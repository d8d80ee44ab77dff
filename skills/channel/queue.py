"""The queries of channels and their messages, in one place: find, store, claim, lease,
ack, count and remove.

Sends, receives and acks run these on every call, so they are plain SQL built once
(as the scheduler's task rows and ledger are): the ORM's per-call statement building
was most of a send's time. Each runs inside its caller's transaction. Claiming takes
the oldest visible messages in send order; on PostgreSQL with ``FOR UPDATE SKIP
LOCKED``, so receivers on several replicas never claim the same message nor wait on
one another (SQLite's ``BEGIN IMMEDIATE`` already runs one writer at a time).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, and_, bindparam, case, delete, func, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from scheduler.models import UTCDateTime
from skills.channel.rows import Channel, ChannelDedupe, ChannelMessage

READY, DEAD = "ready", "dead"
# A live channel is any not deleted (the partial unique index's own predicate, so it is used).
LIVE = Channel.state != "deleted"

FIND = select(
    Channel.id,
    Channel.name,
    Channel.state,
    Channel.max_deliveries,
    Channel.retention_s,
    Channel.stored_count,
    Channel.stored_bytes,
    Channel.billed_mib,
).where(Channel.tenant_id == bindparam("tenant_id"), Channel.name == bindparam("name"), LIVE)
FIND_LOCKED = FIND.with_for_update()
INSERT_MESSAGE = insert(ChannelMessage)
STORED = (
    update(Channel)
    .where(Channel.id == bindparam("channel_id"))
    .values(
        stored_count=Channel.stored_count + bindparam("count"),
        stored_bytes=Channel.stored_bytes + bindparam("bytes"),
    )
)
SEEN = (
    select(ChannelDedupe.message_id, ChannelDedupe.expires_at)
    .where(ChannelDedupe.channel_id == bindparam("channel_id"), ChannelDedupe.dedupe_key == bindparam("key"))
    .with_for_update()
)
FORGET = delete(ChannelDedupe).where(
    ChannelDedupe.channel_id == bindparam("channel_id"), ChannelDedupe.dedupe_key == bindparam("key")
)
REMEMBER = insert(ChannelDedupe)
VISIBLE = (
    select(
        ChannelMessage.seq,
        ChannelMessage.id,
        ChannelMessage.body,
        ChannelMessage.deliveries,
        ChannelMessage.sender_agent,
        ChannelMessage.sent_at,
    )
    .where(
        ChannelMessage.channel_id == bindparam("channel_id"),
        ChannelMessage.state == bindparam("state"),
        ChannelMessage.visible_at <= bindparam("now"),
    )
    .order_by(ChannelMessage.seq)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
LEASE = (
    update(ChannelMessage)
    .where(ChannelMessage.seq == bindparam("b_seq"))
    .values(deliveries=bindparam("b_deliveries"), receipt=bindparam("b_receipt"), visible_at=bindparam("b_until"))
)
BURY = (
    update(ChannelMessage)
    .where(ChannelMessage.seq.in_(bindparam("seqs", expanding=True)))
    .values(state=DEAD, dead_at=bindparam("now"))
)
NEXT_VISIBLE = select(type_coerce(func.min(ChannelMessage.visible_at), UTCDateTime())).where(
    ChannelMessage.channel_id == bindparam("channel_id"),
    ChannelMessage.state == bindparam("state"),
    ChannelMessage.visible_at > bindparam("now"),
)
RECEIPTED = select(ChannelMessage.seq, ChannelMessage.receipt, ChannelMessage.size_bytes).where(
    ChannelMessage.channel_id == bindparam("channel_id"),
    ChannelMessage.receipt.in_(bindparam("receipts", expanding=True)),
)
EXPIRED = select(ChannelMessage.seq, ChannelMessage.size_bytes).where(
    ChannelMessage.channel_id == bindparam("channel_id"), ChannelMessage.expires_at <= bindparam("now")
)
REMOVE = delete(ChannelMessage).where(ChannelMessage.seq.in_(bindparam("seqs", expanding=True)))


@dataclass(frozen=True)
class Stats:
    """What a channel holds now."""

    depth: int  # waiting to be delivered
    in_flight: int  # delivered, leased, not acked yet
    dead_letters: int
    oldest_sent_at: datetime | None  # of the messages not dead


EMPTY = Stats(0, 0, 0, None)


@dataclass(frozen=True)
class Claimed:
    """A message just leased, as its receiver gets it."""

    message_id: str
    body: str  # JSON
    receipt: str
    deliveries: int
    sender_agent: str | None
    sent_at: datetime
    lease_until: datetime


def find(
    session: Session, tenant_id: str, name: str, lock: bool = False
) -> Row[str, str, str, int, int, int, int, int] | None:
    """The tenant's live channel of that name (locked for the transaction with ``lock``)."""
    params = {"tenant_id": tenant_id, "name": name}
    return session.connection().execute(FIND_LOCKED if lock else FIND, params).one_or_none()


def claim(
    session: Session,
    channel_id: str,
    max_deliveries: int,
    now: datetime,
    max_messages: int,
    lease_s: float,
    dead_letters: bool = False,
) -> list[Claimed]:
    """Lease up to ``max_messages`` visible messages, oldest first. A message already
    delivered ``max_deliveries`` times moves to the dead letters instead; from the
    dead letters (``dead_letters``) every message is delivered, however often."""
    until = now + timedelta(seconds=lease_s)
    claimed: list[Claimed] = []
    while len(claimed) < max_messages:
        want = max_messages - len(claimed)
        params = {"channel_id": channel_id, "state": DEAD if dead_letters else READY, "now": now, "limit": want}
        rows = session.connection().execute(VISIBLE, params).all()
        buried = [row.seq for row in rows if not dead_letters and row.deliveries >= max_deliveries]
        leases = []
        for row in rows:
            if row.seq in buried:
                continue
            receipt = f"rc_{secrets.token_hex(16)}"
            leases.append(
                {"b_seq": row.seq, "b_deliveries": row.deliveries + 1, "b_receipt": receipt, "b_until": until}
            )
            claimed.append(Claimed(row.id, row.body, receipt, row.deliveries + 1, row.sender_agent, row.sent_at, until))
        if buried:
            session.connection().execute(BURY, {"seqs": buried, "now": now})
        if leases:
            session.connection().execute(LEASE, leases)
        if len(rows) < want:
            break
    return claimed


def next_visible(session: Session, channel_id: str, now: datetime, dead_letters: bool = False) -> datetime | None:
    """When the first lease of the channel ends (a message then becomes visible again)."""
    params = {"channel_id": channel_id, "state": DEAD if dead_letters else READY, "now": now}
    found: datetime | None = session.connection().execute(NEXT_VISIBLE, params).scalar()
    return found


def stats(session: Session, channel_ids: list[str], now: datetime) -> dict[str, Stats]:
    """Each channel's depth, messages in flight, dead letters and oldest message."""
    if not channel_ids:
        return {}
    ready = ChannelMessage.state == READY
    leased = and_(ready, ChannelMessage.receipt.is_not(None), ChannelMessage.visible_at > now)
    rows = session.execute(
        select(
            ChannelMessage.channel_id,
            func.sum(case((and_(ready, ~leased), 1), else_=0)),
            func.sum(case((leased, 1), else_=0)),
            func.sum(case((ChannelMessage.state == DEAD, 1), else_=0)),
            type_coerce(func.min(case((ready, ChannelMessage.sent_at), else_=None)), UTCDateTime()),
        )
        .where(ChannelMessage.channel_id.in_(channel_ids))
        .group_by(ChannelMessage.channel_id)
    )
    return {row[0]: Stats(int(row[1]), int(row[2]), int(row[3]), row[4]) for row in rows}
