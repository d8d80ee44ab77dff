"""What crosses the wire for the channel skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from skills.base import OpInput

CHANNEL = Field(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    description="The channel's name, e.g. 'jobs' (letters, digits, '_', '-', '.'); yours alone: "
    "another tenant's 'jobs' is another channel.",
)
RECEIPT = "The receipt channel_receive gave with the message."


class CreateInput(OpInput):
    channel: str = CHANNEL
    max_deliveries: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Deliveries a message gets at most; one not acked after its last moves to the dead letters.",
    )
    retention_s: int = Field(
        default=4 * 86400,
        ge=60,
        le=14 * 86400,
        description="Seconds a message is kept, acked or not; also how long a dedupe_key makes a resend a no-op.",
    )


class ChannelInfo(BaseModel):
    channel: str
    channel_id: str
    state: Literal["live", "stopped"] = Field(
        description="live, or stopped: the budget ran out, sends are refused until it covers them again; "
        "its messages are kept and can be received."
    )
    depth: int = Field(description="Messages waiting to be delivered.")
    in_flight: int = Field(description="Messages delivered and leased, not acked yet.")
    dead_letters: int = Field(description="Messages not acked after max_deliveries deliveries.")
    oldest_age_s: float | None = Field(description="Age of the oldest message waiting or in flight; null when none.")
    stored_bytes: int = Field(description="The bodies it stores, dead letters included: what its storage bills.")
    max_deliveries: int
    retention_s: int
    created_at: str


class CreateOutput(ChannelInfo):
    created: bool = Field(description="False when it existed already, with these settings.")


class SendInput(OpInput):
    channel: str = CHANNEL
    body: JsonValue = Field(description="Any JSON value, at most 256 KiB as compact JSON.")
    dedupe_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Sending again with the same key within the channel's retention_s stores nothing and answers "
        "the first message's id: retry a send safely.",
    )


class SendOutput(BaseModel):
    message_id: str
    channel: str
    duplicate: bool = Field(description="True when dedupe_key matched an earlier send: nothing new was stored.")


class ReceiveInput(OpInput):
    channel: str = CHANNEL
    max_messages: int = Field(default=1, ge=1, le=100, description="Messages to take at most.")
    wait_s: float = Field(
        default=0.0,
        ge=0,
        le=30,
        description="With no message waiting, wait up to this long for one; the answer comes as soon as one is sent.",
    )
    lease_s: float = Field(
        default=30.0,
        ge=0.1,
        le=43200,
        description="Seconds the messages are yours to channel_ack; after that they are delivered again.",
    )
    dead_letters: bool = Field(
        default=False,
        description="Take messages from the channel's dead letters instead (at once, never waiting); ack removes them.",
    )


class MessageOut(BaseModel):
    message_id: str
    body: JsonValue
    receipt: str = Field(description="Pass it to channel_ack once the message is handled.")
    deliveries: int = Field(description="1 the first time; more when an earlier lease ran out without an ack.")
    sender_agent: str | None = Field(
        description="The agent that sent it (its key's or stdio server's); null if unnamed."
    )
    sent_at: str
    lease_until: str = Field(description="Ack before this, or the message is delivered again.")


class ReceiveOutput(BaseModel):
    messages: list[MessageOut] = Field(description="Oldest first; empty when none came within wait_s.")


class AckInput(OpInput):
    channel: str = CHANNEL
    receipts: list[str] = Field(min_length=1, max_length=100, description=RECEIPT + " One or more.")


class AckOutput(BaseModel):
    acked: int = Field(description="Messages deleted.")
    not_acked: list[str] = Field(
        description="Receipts that matched no message: acked already, or the lease ran out and the message was "
        "delivered again (a newer receipt holds it)."
    )


class ListInput(OpInput):
    pass


class ListOutput(BaseModel):
    channels: list[ChannelInfo]


class DescribeInput(OpInput):
    channel: str = CHANNEL


class DescribeOutput(ChannelInfo):
    pass


class DeleteInput(OpInput):
    channel: str = CHANNEL


class DeleteOutput(BaseModel):
    channel: str
    deleted: bool = Field(description="False when there was no such channel: deleting twice is fine.")
