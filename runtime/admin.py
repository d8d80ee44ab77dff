"""`cloudskills tenants ...` and `cloudskills keys ...`: the operator's commands."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from common.errors import CloudSkillsError
from runtime.settings import load_settings
from runtime.storage import open_store
from runtime.tenants import create_key, create_tenant, list_keys, list_tenants, revoke_key, update_tenant
from scheduler.pricing import format_money, parse_money
from scheduler.store import Store
from skills.registry import discover

TASK_QUOTAS = {
    "max_concurrent_tasks": "Tasks queued or running at once.",
    "tasks_per_minute": "Tasks started per minute.",
    "tokens_per_minute": "Model tokens per minute.",
}
# Each resource kind's live-count quota, from the skills that keep resources.
LIVE_QUOTAS = {quota.name: quota for quota in discover().quotas()}
QUOTA_OPTIONS = TASK_QUOTAS | {
    name: f"{quota.noun.capitalize()} alive at once (default {quota.default})." for name, quota in LIVE_QUOTAS.items()
}


def store() -> Store:
    return open_store(load_settings().db_url)


def money_option(value: str | None) -> int | None:
    if value is None or value.lower() == "none":
        return None
    try:
        return parse_money(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def guarded(action: Callable[[], object]) -> None:
    try:
        action()
    except CloudSkillsError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


@click.group()
def tenants() -> None:
    """Tenants: who owns resources and pays for them."""


@tenants.command("create")
@click.argument("name")
@click.option("--budget", help="A hard budget in currency units, e.g. 25 or 12.50 (default: none).")
def tenants_create(name: str, budget: str | None) -> None:
    """Create a tenant."""

    def act() -> None:
        tenant = create_tenant(store(), name, money_option(budget))
        click.echo(f"created tenant {tenant.name}; make it a key with `cloudskills keys create --tenant {tenant.name}`")

    guarded(act)


def quota_params() -> list[click.Option]:
    return [
        click.Option([f"--{name.replace('_', '-')}", name], type=int, help=text) for name, text in QUOTA_OPTIONS.items()
    ]


@tenants.command("set", params=quota_params())
@click.argument("name")
@click.option("--budget", help="Hard budget in currency units, or 'none'.")
@click.option("--alert", help="Soft alert threshold in currency units, or 'none'.")
def tenants_set(name: str, budget: str | None, alert: str | None, **quotas: int | None) -> None:
    """Change a tenant's budget, alert threshold or quotas."""
    fields: dict[str, int | None] = {k: v for k, v in quotas.items() if v is not None}
    if budget is not None:
        fields["budget_micros"] = money_option(budget)
    if alert is not None:
        fields["alert_micros"] = money_option(alert)

    def act() -> None:
        update_tenant(store(), name, **fields)
        click.echo(f"updated tenant {name}")

    guarded(act)


@tenants.command("list")
def tenants_list() -> None:
    """Every tenant with its spend, budget and quotas."""
    for t in list_tenants(store()):
        budget = format_money(t.budget_micros, "USD") if t.budget_micros is not None else "none"
        live = "\t".join(f"{q.noun} {q.limit(t)}" for q in LIVE_QUOTAS.values())
        click.echo(
            f"{t.name}\tspent {format_money(t.spent_micros, 'USD')}\tbudget {budget}\t"
            f"tasks {t.max_concurrent_tasks} at once, {t.tasks_per_minute}/min\t{live}"
        )


@click.group()
def keys() -> None:
    """API keys: `Authorization: Bearer <key>` over HTTP."""


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--agent", default=None, help="The agent of the tenant this key speaks for (e.g. planner).")
def keys_create(tenant: str, agent: str | None) -> None:
    """Make a key for a tenant (and one of its agents); it is printed once and only its hash is kept."""

    def act() -> None:
        new = create_key(store(), tenant, agent)
        who = f"agent {new.agent} of tenant {new.tenant_id}" if new.agent else f"tenant {new.tenant_id}"
        click.echo(f"key id {new.id} for {who} (the key is shown only now):", err=True)
        click.echo(new.key)

    guarded(act)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: calls with it get 401 from now on."""
    guarded(lambda: click.echo(f"revoked {key_id}" if revoke_key(store(), key_id) else f"{key_id} was revoked already"))


@keys.command("list")
@click.option("--tenant", default=None)
def keys_list(tenant: str | None) -> None:
    """Key ids, their tenants and agents, and whether they are revoked (never the keys)."""
    for key in list_keys(store(), tenant):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
        click.echo(f"{key.id}\t{key.tenant_id}\t{key.agent or '-'}\t{state}")


def register_admin_commands(main: click.Group) -> None:
    main.add_command(tenants)
    main.add_command(keys)
