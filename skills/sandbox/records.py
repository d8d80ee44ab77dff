"""What a sandbox is in the books: its record as handlers see it, what it uses a
second, its live-count quota, and the checks of a template and its limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from sandbox.driver import Limits, SandboxHandle
from sandbox.templates import MAX_LIMITS, TEMPLATES, Template
from scheduler.leases import used_in
from scheduler.models import Task, utcnow
from scheduler.pricing import PriceCatalog, Usage
from scheduler.resources import LiveQuota
from skills.sandbox.rows import Sandbox

# A paused sandbox lives on (on disk): it counts against the quota, and its owner may
# resume, describe or destroy it; nothing else reaches it until it runs again.
LIVE_STATES = ("starting", "running", "paused", "resuming")
PAUSED_STATES = ("paused", "resuming")
KIND = "sandbox"
DISK_METER = "sandbox.disk_mib_ms"
# The templates a call gets when it names none (the warm pool keeps both ready).
RUN_DEFAULT = "python"
CREATE_DEFAULT = "dev"


def reap_view(session: Session) -> Sequence[Any]:
    """Every live sandbox as the reaper judges it: (id, task_id, last_used_at, ttl_s,
    container_id, its task's state, its state, paused_at)."""
    query = (
        select(
            Sandbox.id,
            Sandbox.task_id,
            Sandbox.last_used_at,
            Sandbox.ttl_s,
            Sandbox.container_id,
            Task.state,
            Sandbox.state,
            Sandbox.paused_at,
        )
        .outerjoin(Task, Task.id == Sandbox.task_id)
        .where(Sandbox.state.in_(LIVE_STATES))
    )
    return session.execute(query).all()


def count_live(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(Sandbox.tenant_id == tenant_id, Sandbox.state.in_(LIVE_STATES))
    return int(session.scalar(query) or 0)


QUOTA = LiveQuota(
    "max_live_sandboxes",
    32,
    "sandboxes",
    "destroy one with sandbox_destroy (sandbox_list shows them) or wait for a sandbox_run to finish",
    count_live,
)


@dataclass(frozen=True)
class SandboxRecord:
    """A snapshot of a sandbox's row, safe to use outside its transaction."""

    id: str
    tenant_id: str
    task_id: str | None
    template: str
    container_id: str | None
    state: str
    vcpus: float
    memory_mib: int
    disk_mib: int
    ttl_s: int

    @classmethod
    def of(cls, row: Sandbox) -> SandboxRecord:
        return cls(
            row.id,
            row.tenant_id,
            row.task_id,
            row.template,
            row.container_id,
            row.state,
            row.vcpus,
            row.memory_mib,
            row.disk_mib,
            row.ttl_s,
        )

    @property
    def handle(self) -> SandboxHandle:
        assert self.container_id is not None
        return SandboxHandle(container_id=self.container_id, name=f"cloudskills-{self.id}")


def per_second(limits: Limits) -> Usage:
    """What one second of a sandbox of this size uses, in the sandbox meters' units."""
    return Usage.of(
        {
            "sandbox.vcpu_ms": round(limits.vcpus * 1000),
            "sandbox.mib_ms": limits.memory_mib * 1000,
            DISK_METER: limits.disk_mib * 1000,
        }
    )


def billable(catalog: PriceCatalog, usage: Usage) -> Usage:
    """The usage, less the disk meter where the price catalog has no price for it (an
    operator's own prices_file from before sandbox disks): their disk is then free,
    rather than every sandbox failing at settlement."""
    if DISK_METER in catalog.rates:
        return usage
    return Usage.of({meter: quantity for meter, quantity in usage if meter != DISK_METER})


def paused_per_second(row: Sandbox) -> Usage:
    """What one second of a paused sandbox uses: its disk and its checkpoint's, nothing else."""
    return Usage.of({DISK_METER: (row.disk_mib + row.checkpoint_mib) * 1000})


def usage_for(limits: Limits, ms: int) -> Usage:
    """What a sandbox of this size uses living ``ms`` milliseconds."""
    return used_in(per_second(limits), ms)


def row_limits(row: Sandbox) -> Limits:
    """The limits its bill is made of (pids are not billed)."""
    return Limits(vcpus=row.vcpus, memory_mib=row.memory_mib, disk_mib=row.disk_mib)


def lifetime_usage(row: Sandbox) -> Usage:
    end = row.destroyed_at or utcnow()
    ms = max(int((end - row.created_at) / timedelta(milliseconds=1)), 0)
    return usage_for(row_limits(row), ms)


def ended_because(row: Sandbox) -> str:
    if row.state == "failed":
        return f"has failed ({row.destroy_reason}) and was removed"
    if row.destroy_reason == "budget":
        return "was destroyed because the budget could not cover its next lease (billing_balance shows it)"
    if row.destroy_reason == "paused_retention":
        return "was destroyed after staying paused longer than this server keeps paused sandboxes"
    if row.destroy_reason == "idle_ttl":
        return f"expired after {row.ttl_s} s without a call (its ttl_s)"
    return f"was destroyed ({row.destroy_reason})"


def resolve_template(name: str) -> Template:
    template = TEMPLATES.get(name)
    if template is None:
        raise InvalidInput(f"unknown template {name!r}: use one of {', '.join(sorted(TEMPLATES))}.")
    return template


def check_limits(limits: Limits) -> Limits:
    for field in ("vcpus", "memory_mib", "pids", "disk_mib"):
        value, most = getattr(limits, field), getattr(MAX_LIMITS, field)
        if not 0 < value <= most:
            raise InvalidInput(f"{field} must be above 0 and at most {most:g}; you asked for {value:g}.")
    return limits
