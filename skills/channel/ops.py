"""The channel skill's handlers."""

from __future__ import annotations

import json
from datetime import datetime

from scheduler.models import utcnow
from scheduler.tasks import TaskContext
from skills.channel import models as m
from skills.channel.channels import ChannelManager, ChannelView
from skills.channel.queue import Claimed

# Time a receive's task gets beyond its wait: the claim and the answer.
RECEIVE_OVERHEAD_S = 30.0


def manager(ctx: TaskContext) -> ChannelManager:
    return ctx.service(ChannelManager)


def age_s(since: datetime | None) -> float | None:
    return None if since is None else round(max((utcnow() - since).total_seconds(), 0.0), 3)


def info(view: ChannelView) -> m.ChannelInfo:
    row, stats = view.row, view.stats
    return m.ChannelInfo(
        channel=row.name,
        channel_id=row.id,
        state="stopped" if row.state == "stopped" else "live",
        depth=stats.depth,
        in_flight=stats.in_flight,
        dead_letters=stats.dead_letters,
        oldest_age_s=age_s(stats.oldest_sent_at),
        stored_bytes=row.stored_bytes,
        max_deliveries=row.max_deliveries,
        retention_s=row.retention_s,
        created_at=row.created_at.isoformat(),
    )


def message_out(delivery: Claimed) -> m.MessageOut:
    return m.MessageOut(
        message_id=delivery.message_id,
        body=json.loads(delivery.body),
        receipt=delivery.receipt,
        deliveries=delivery.deliveries,
        sender_agent=delivery.sender_agent,
        sent_at=delivery.sent_at.isoformat(),
        lease_until=delivery.lease_until.isoformat(),
    )


async def create(ctx: TaskContext, args: m.CreateInput) -> m.CreateOutput:
    view, made = manager(ctx).create(ctx.tenant_id, args.channel, args.max_deliveries, args.retention_s)
    return m.CreateOutput(**info(view).model_dump(), created=made)


async def send(ctx: TaskContext, args: m.SendInput) -> m.SendOutput:
    """Store one message; the channel is made with default settings on its first send."""
    body = json.dumps(args.body, separators=(",", ":"), ensure_ascii=False)
    sent = manager(ctx).send(ctx.tenant_id, args.channel, body, ctx.agent, args.dedupe_key)
    return m.SendOutput(message_id=sent.message_id, channel=args.channel, duplicate=sent.duplicate)


async def receive(ctx: TaskContext, args: m.ReceiveInput) -> m.ReceiveOutput:
    deliveries = await manager(ctx).receive(
        ctx.tenant_id, args.channel, args.max_messages, args.wait_s, args.lease_s, args.dead_letters
    )
    return m.ReceiveOutput(messages=[message_out(d) for d in deliveries])


async def ack(ctx: TaskContext, args: m.AckInput) -> m.AckOutput:
    acked, not_acked = manager(ctx).ack(ctx.tenant_id, args.channel, args.receipts)
    return m.AckOutput(acked=acked, not_acked=not_acked)


async def list_(ctx: TaskContext, args: m.ListInput) -> m.ListOutput:
    return m.ListOutput(channels=[info(view) for view in manager(ctx).list_live(ctx.tenant_id)])


async def describe(ctx: TaskContext, args: m.DescribeInput) -> m.DescribeOutput:
    return m.DescribeOutput(**info(manager(ctx).describe(ctx.tenant_id, args.channel)).model_dump())


async def delete(ctx: TaskContext, args: m.DeleteInput) -> m.DeleteOutput:
    deleted = manager(ctx).delete(ctx.tenant_id, args.channel)
    return m.DeleteOutput(channel=args.channel, deleted=deleted)


def receive_timeout(args: m.ReceiveInput) -> float:
    return args.wait_s + RECEIVE_OVERHEAD_S
