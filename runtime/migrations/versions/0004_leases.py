"""leases: one billing path for long-lived resources; live-count quotas kept per kind

Live sandboxes, databases and VMs get a lease from where their billing stood
(a session sandbox from its creation: its lifetime used to be billed at the
end; a database or VM from its ``billed_until``), holding nothing yet: the first
renewal bills the interval and holds the next lease. The tenants' three
``max_live_*`` columns move into one ``quotas`` map that each kind reads by name.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

QUOTA_COLUMNS = ("max_live_sandboxes", "max_live_databases", "max_live_vms")
QUOTA_DEFAULTS = {"max_live_sandboxes": 32, "max_live_databases": 8, "max_live_vms": 4}
# A first lease after the upgrade, long enough for the first renewal to bill what was owed.
FIRST_LEASE = timedelta(minutes=5)


def utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("op", sa.String(length=64), nullable=False),
        sa.Column("rate", sa.JSON(), nullable=False),
        sa.Column("held_micros", sa.BigInteger(), nullable=False),
        sa.Column("billed_until", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_leases_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_leases_open", ["ended_at", "lease_until"], unique=False)

    bind = op.get_bind()
    leases = sa.table(
        "leases",
        *(sa.column(name) for name in ("id", "tenant_id", "kind", "op", "held_micros", "end_reason", "ended_at")),
        sa.column("rate", sa.JSON()),
        sa.column("billed_until", scheduler.models.UTCDateTime()),
        sa.column("lease_until", scheduler.models.UTCDateTime()),
    )
    lease_until = datetime.now(UTC) + FIRST_LEASE
    rows = []
    for sid, tenant, vcpus, mib, created in bind.execute(
        sa.text(
            "SELECT id, tenant_id, vcpus, memory_mib, created_at FROM sandboxes "
            "WHERE task_id IS NULL AND state IN ('starting', 'running')"
        )
    ):
        rate = {"sandbox.vcpu_ms": round(vcpus * 1000), "sandbox.mib_ms": mib * 1000}
        rows.append((sid, tenant, "sandbox", "lifetime", rate, utc(created)))
    for did, tenant, engine, size, mib, billed in bind.execute(
        sa.text(
            "SELECT id, tenant_id, engine, size, storage_mib, billed_until FROM databases "
            "WHERE state IN ('running', 'deleting')"
        )
    ):
        rate = {"database.storage_mib_ms": mib * 1000}
        if engine != "sqlite":
            rate[f"database.instance_ms.{size}"] = 1000
        rows.append((did, tenant, "db", "instance", rate, utc(billed)))
    for vid, tenant, state, vcpus, mib, disk, billed in bind.execute(
        sa.text(
            "SELECT id, tenant_id, state, vcpus, memory_mib, disk_mib, billed_until FROM vms "
            "WHERE state IN ('creating', 'starting', 'running', 'stopping', 'stopped', 'deleting')"
        )
    ):
        rate = {"vm.disk_mib_ms": disk * 1000}
        if state != "stopped":
            rate |= {"vm.vcpu_ms": vcpus * 1000, "vm.mib_ms": mib * 1000}
        rows.append((vid, tenant, "vm", state, rate, utc(billed)))
    if rows:
        op.bulk_insert(
            leases,
            [
                {
                    "id": rid,
                    "tenant_id": tenant,
                    "kind": kind,
                    "op": op_name,
                    "rate": rate,
                    "held_micros": 0,
                    "billed_until": since,
                    "lease_until": max(lease_until, since),
                    "ended_at": None,
                    "end_reason": None,
                }
                for rid, tenant, kind, op_name, rate, since in rows
            ],
        )

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quotas", sa.JSON(), nullable=True))
    for row in bind.execute(sa.text(f"SELECT id, {', '.join(QUOTA_COLUMNS)} FROM tenants")).mappings():
        quotas = {name: row[name] for name in QUOTA_COLUMNS if row[name] != QUOTA_DEFAULTS[name]}
        bind.execute(
            sa.text("UPDATE tenants SET quotas = :q WHERE id = :id"), {"q": json.dumps(quotas), "id": row["id"]}
        )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for name in QUOTA_COLUMNS:
            batch_op.drop_column(name)
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_column("billed_until")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_column("billed_until")


def downgrade() -> None:
    now = datetime.now(UTC)
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "billed_until", scheduler.models.UTCDateTime(timezone=True), nullable=False, server_default=str(now)
            )
        )
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "billed_until", scheduler.models.UTCDateTime(timezone=True), nullable=False, server_default=str(now)
            )
        )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for name in QUOTA_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default=str(QUOTA_DEFAULTS[name])))
        batch_op.drop_column("quotas")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index("ix_leases_open")
        batch_op.drop_index(batch_op.f("ix_leases_tenant_id"))
    op.drop_table("leases")
