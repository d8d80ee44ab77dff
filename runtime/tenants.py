"""Tenants: who owns tasks, sandboxes and charges."""

from __future__ import annotations

from scheduler.models import Tenant
from scheduler.store import Store


def ensure_tenant(store: Store, name: str) -> Tenant:
    """The tenant named ``name``, created (with no budget) if it does not exist yet."""
    with store.transaction() as session:
        tenant = session.get(Tenant, name)
        if tenant is None:
            tenant = Tenant(id=name, name=name)
            session.add(tenant)
        return tenant
