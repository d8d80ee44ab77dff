"""What a tenant may keep in channels: how many live at once, and per channel its depth,
its messages' size and their retention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from scheduler.models import Tenant
from scheduler.resources import LiveQuota
from skills.channel.rows import Channel

QUOTAS = select(Tenant.quotas).where(Tenant.id == bindparam("tenant_id"))
# What one message may carry, whatever a tenant's quota says.
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """A tenant's channel quotas: ``Tenant.quotas`` keys of the same names, these defaults otherwise."""

    max_channel_depth: int = 10_000
    max_channel_message_bytes: int = MAX_BODY_BYTES
    max_channel_retention_s: int = 14 * 86400

    @classmethod
    def of(cls, quotas: Mapping[str, Any] | None) -> Limits:
        given = quotas or {}
        return cls(**{name: int(given.get(name, value)) for name, value in cls().__dict__.items()})

    @property
    def message_bytes(self) -> int:
        return min(self.max_channel_message_bytes, MAX_BODY_BYTES)


def limits_of(session: Session, tenant_id: str) -> Limits:
    return Limits.of(session.connection().execute(QUOTAS, {"tenant_id": tenant_id}).scalar())


def count_live(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(Channel.tenant_id == tenant_id, Channel.state != "deleted")
    return int(session.scalar(query) or 0)


QUOTA = LiveQuota(
    "max_live_channels", 32, "channels", "delete one with channel_delete (channel_list shows them)", count_live
)
