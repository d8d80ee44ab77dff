"""The queries of a channel's messages, in one place: claim, lease, count and remove.

Each runs inside its caller's transaction. Claiming takes the oldest visible
messages in send order; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so
receivers on several replicas never claim the same message, and never wait on
one another (SQLite's ``BEGIN IMMEDIATE`` already runs one writer at a time).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Delete, and_, case, delete, func, select, type_coerce
from sqlalchemy.orm import Session

from scheduler.models import UTCDateTime
from skills.channel.rows import ChannelMessage

READY, DEAD = "ready", "dead"


@dataclass(frozen=True)
class Stats:
    """What a channel holds now."""

    depth: int  # waiting to be delivered
    in_flight: int  # delivered, leased, not acked yet
    dead_letters: int
    oldest_sent_at: datetime | None  # of the messages not dead


EMPTY = Stats(0, 0, 0, None)


def new_receipt() -> str:
    return f"rc_{secrets.token_hex(16)}"


def claim(
    session: Session,
    channel_id: str,
    max_deliveries: int,
    now: datetime,
    max_messages: int,
    lease_s: float,
    dead_letters: bool = False,
) -> list[ChannelMessage]:
    """Lease up to ``max_messages`` visible messages, oldest first. A message already
    delivered ``max_deliveries`` times moves to the dead letters instead; from the
    dead letters (``dead_letters``) every message is delivered, however often."""
    state = DEAD if dead_letters else READY
    until = now + timedelta(seconds=lease_s)
    claimed: list[ChannelMessage] = []
    while len(claimed) < max_messages:
        want = max_messages - len(claimed)
        batch = list(
            session.scalars(
                select(ChannelMessage)
                .where(ChannelMessage.channel_id == channel_id, ChannelMessage.state == state)
                .where(ChannelMessage.visible_at <= now)
                .order_by(ChannelMessage.seq)
                .limit(want)
                .with_for_update(skip_locked=True)
            )
        )
        for message in batch:
            if not dead_letters and message.deliveries >= max_deliveries:
                message.state, message.dead_at = DEAD, now
                continue
            message.deliveries += 1
            message.receipt = new_receipt()
            message.visible_at = until
            claimed.append(message)
        if len(batch) < want:
            break
    session.flush()
    return claimed


def next_visible(session: Session, channel_id: str, now: datetime, dead_letters: bool = False) -> datetime | None:
    """When the first lease of the channel ends (a message then becomes visible again)."""
    return session.scalar(
        select(type_coerce(func.min(ChannelMessage.visible_at), UTCDateTime())).where(
            ChannelMessage.channel_id == channel_id,
            ChannelMessage.state == (DEAD if dead_letters else READY),
            ChannelMessage.visible_at > now,
        )
    )


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


def held(session: Session, channel_id: str, *where: ColumnElement[bool]) -> tuple[list[int], int]:
    """The seqs of a channel's messages that match, and their bytes."""
    query = select(ChannelMessage.seq, ChannelMessage.size_bytes).where(ChannelMessage.channel_id == channel_id)
    rows = session.execute(query.where(*where)).all()
    return [row[0] for row in rows], sum(row[1] for row in rows)


def remove(seqs: list[int]) -> Delete:
    return delete(ChannelMessage).where(ChannelMessage.seq.in_(seqs))
