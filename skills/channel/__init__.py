"""The channel skill: durable FIFO messages between agents, with leases, acks and dead letters."""

from __future__ import annotations

from skills.base import Op
from skills.channel import models as m
from skills.channel import ops
from skills.channel.channels import from_platform
from skills.channel.limits import QUOTA
from skills.registry import skill_from_doc

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "create",
            "Make a channel with its own max_deliveries and retention_s; channel_send makes one with the defaults "
            "on its first message.",
            m.CreateInput,
            m.CreateOutput,
            ops.create,
            idempotent=True,
        ),
        Op(
            "send",
            "Send one JSON message to a channel; returns message_id. A dedupe_key makes a resend a no-op.",
            m.SendInput,
            m.SendOutput,
            ops.send,
        ),
        Op(
            "receive",
            "Take the oldest messages of a channel, each leased with a receipt to channel_ack; with wait_s, wait "
            "for one to be sent. A message not acked within lease_s is delivered again.",
            m.ReceiveInput,
            m.ReceiveOutput,
            ops.receive,
            # Draining a channel is how its storage bill ends: never refused for money.
            releases=True,
            timeout_s=ops.receive_timeout,
        ),
        Op(
            "ack",
            "Acknowledge received messages by their receipts: they are deleted and never delivered again.",
            m.AckInput,
            m.AckOutput,
            ops.ack,
            releases=True,
            idempotent=True,
        ),
        Op(
            "list",
            "List your channels with their depth, messages in flight and dead letters.",
            m.ListInput,
            m.ListOutput,
            ops.list_,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "describe",
            "A channel's depth, oldest message's age, messages in flight, dead letters and settings.",
            m.DescribeInput,
            m.DescribeOutput,
            ops.describe,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "delete",
            "Delete a channel and every message in it; deleting one already deleted succeeds.",
            m.DeleteInput,
            m.DeleteOutput,
            ops.delete,
            destructive=True,
            releases=True,
            idempotent=True,
            confirm=True,
        ),
    ),
    resource=from_platform,
    quota=QUOTA,
)
