"""What a tenant may keep in workspaces: how many live at once, and how many MiB in all
(each workspace's cap, and each snapshot at its workspace's cap)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from common.errors import QuotaExceeded
from scheduler import ledger
from scheduler.models import Tenant
from scheduler.resources import LiveQuota
from skills.workspace.rows import Workspace, WorkspaceSnapshot

LIVE = ("creating", "live", "stopped")
QUOTAS = select(Tenant.quotas).where(Tenant.id == bindparam("tenant_id"))


@dataclass(frozen=True)
class Limits:
    """A tenant's workspace quotas: ``Tenant.quotas`` keys of the same names, these defaults otherwise."""

    max_workspace_total_mib: int = 20 * 1024
    max_workspace_snapshots: int = 8

    @classmethod
    def of(cls, quotas: Mapping[str, Any] | None) -> Limits:
        given = quotas or {}
        return cls(**{name: int(given.get(name, value)) for name, value in cls().__dict__.items()})


def limits_of(session: Session, tenant_id: str) -> Limits:
    return Limits.of(session.connection().execute(QUOTAS, {"tenant_id": tenant_id}).scalar())


def count_live(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(Workspace.tenant_id == tenant_id, Workspace.state.in_(LIVE))
    return int(session.scalar(query) or 0)


def total_mib(session: Session, tenant_id: str) -> int:
    """The MiB the tenant's live workspaces and their snapshots count for."""
    caps = select(func.coalesce(func.sum(Workspace.size_mib), 0)).where(
        Workspace.tenant_id == tenant_id, Workspace.state.in_(LIVE)
    )
    copies = (
        select(func.coalesce(func.sum(WorkspaceSnapshot.size_mib), 0))
        .join(Workspace, Workspace.id == WorkspaceSnapshot.workspace_id)
        .where(WorkspaceSnapshot.tenant_id == tenant_id, Workspace.state.in_(LIVE))
    )
    return int(session.scalar(caps) or 0) + int(session.scalar(copies) or 0)


def check_room(session: Session, tenant_id: str, more_mib: int, what: str) -> None:
    """Refuse ``more_mib`` past the tenant's total; the tenant's row is locked for the rest of
    the transaction, so two creates cannot both pass."""
    ledger.locked_tenant(session, tenant_id)
    most, used = limits_of(session, tenant_id).max_workspace_total_mib, total_mib(session, tenant_id)
    if used + more_mib > most:
        raise QuotaExceeded(
            f"{what} needs {more_mib} MiB and your workspaces and snapshots count {used} of the {most} MiB your "
            "quota allows: delete a workspace or a snapshot (workspace_list shows them), or ask for less, then retry."
        )


QUOTA = LiveQuota(
    "max_live_workspaces", 16, "workspaces", "delete one with workspace_delete (workspace_list shows them)", count_live
)
