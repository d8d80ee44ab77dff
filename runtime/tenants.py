"""Tenants and their API keys: who owns tasks, sandboxes and charges, and who may call.

A key is shown once, when it is made; only its SHA-256 is stored, so a stolen
database gives no working key. Keys never reach logs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select

from common.errors import InvalidInput, NotFound
from scheduler.models import ApiKey, Tenant, utcnow
from scheduler.store import Store
from scheduler.tasks import new_id

KEY_PREFIX = "csk_"
DEFAULT_TENANT = "local"
AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Names an agent cannot take: `shared` is the namespace every agent of a tenant shares.
RESERVED_AGENTS = ("shared",)


def check_agent(name: str | None) -> str | None:
    """An agent's name as given, or an error that says what a name may be."""
    if name is None:
        return None
    if not AGENT_NAME.match(name) or name in RESERVED_AGENTS:
        raise InvalidInput(
            f"{name!r} cannot name an agent: use 1-64 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit, and not 'shared' (the namespace all of a tenant's agents share)."
        )
    return name


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    tenant_id: str
    key: str  # the secret itself: shown once, never stored
    agent: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who a call acts for: a tenant, and which of its agents (None: unnamed)."""

    tenant_id: str
    agent: str | None = None


def ensure_tenant(store: Store, name: str) -> Tenant:
    """The tenant named ``name``, created (with no budget) if it does not exist yet."""
    with store.transaction() as session:
        tenant = session.get(Tenant, name)
        if tenant is None:
            tenant = Tenant(id=name, name=name)
            session.add(tenant)
        return tenant


def create_tenant(store: Store, name: str, budget_micros: int | None = None) -> Tenant:
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput("a tenant name is 1-64 letters, digits, '-' or '_': choose another.")
    with store.transaction() as session:
        if session.get(Tenant, name) is not None:
            raise InvalidInput(f"a tenant {name!r} exists already: choose another name, or use it.")
        tenant = Tenant(id=name, name=name, budget_micros=budget_micros)
        session.add(tenant)
        return tenant


def update_tenant(store: Store, name: str, **fields: int | None) -> Tenant:
    """Set a tenant's budget, alert threshold or quotas (the fields given)."""
    with store.transaction() as session:
        tenant = session.get(Tenant, name)
        if tenant is None:
            raise NotFound(f"no tenant {name!r}: `cloudskills tenants list` shows them.")
        quotas = dict(tenant.quotas or {})
        for field, value in fields.items():
            if field.startswith("max_live_"):  # a resource kind's live-count quota
                if value is None:
                    quotas.pop(field, None)
                else:
                    quotas[field] = value
            else:
                setattr(tenant, field, value)
        tenant.quotas = quotas
        return tenant


def list_tenants(store: Store) -> list[Tenant]:
    with store.transaction() as session:
        return list(session.scalars(select(Tenant).order_by(Tenant.created_at)))


def create_key(store: Store, tenant_id: str, agent: str | None = None) -> NewKey:
    """A new key for the tenant; with ``agent``, calls with it act as that agent of the tenant."""
    check_agent(agent)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key")
    with store.transaction() as session:
        if session.get(Tenant, tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id!r}: create it with `cloudskills tenants create {tenant_id}`.")
        session.add(ApiKey(id=key_id, tenant_id=tenant_id, key_hash=key_hash(key), agent=agent))
    return NewKey(key_id, tenant_id, key, agent)


def revoke_key(store: Store, key_id: str) -> bool:
    """Revoke a key; False when it was revoked already."""
    with store.transaction() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}: `cloudskills keys list` shows the ids.")
        if row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True


def list_keys(store: Store, tenant_id: str | None = None) -> list[ApiKey]:
    with store.transaction() as session:
        query = select(ApiKey).order_by(ApiKey.created_at)
        if tenant_id is not None:
            query = query.where(ApiKey.tenant_id == tenant_id)
        return list(session.scalars(query))


def caller_of_key(store: Store, key: str) -> Caller | None:
    """The tenant (and agent) a live key speaks for, or None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX):
        return None
    with store.reading() as session:  # every HTTP request's: never waits behind a settlement
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key)))
        if row is None or row.revoked_at is not None:
            return None
        return Caller(row.tenant_id, row.agent)


def tenant_of_key(store: Store, key: str) -> str | None:
    """The tenant a live key belongs to, or None for an unknown or revoked key."""
    caller = caller_of_key(store, key)
    return None if caller is None else caller.tenant_id


def bootstrap(store: Store) -> NewKey | None:
    """On a store with no tenants, make the default one and a key for it (returned once)."""
    with store.transaction() as session:
        if session.scalar(select(func.count()).select_from(Tenant)):
            return None
    ensure_tenant(store, DEFAULT_TENANT)
    return create_key(store, DEFAULT_TENANT)
