"""vms: virtual machines, their disk snapshots, and a quota of live VMs per tenant

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:16:42.451983
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "vms",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("flavor", sa.String(length=32), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_mib", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("accel", sa.String(length=8), nullable=True),
        sa.Column("ttl_s", sa.Integer(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("billed_until", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delete_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.create_index("ix_vms_state", ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_vms_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "vm_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("vm_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"],
            ["vms.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vm_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vm_snapshots_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_vm_snapshots_vm_id"), ["vm_id"], unique=False)

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_live_vms", sa.Integer(), nullable=False, server_default="4"))


def downgrade() -> None:

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("max_live_vms")

    with op.batch_alter_table("vm_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vm_snapshots_vm_id"))
        batch_op.drop_index(batch_op.f("ix_vm_snapshots_tenant_id"))

    op.drop_table("vm_snapshots")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vms_tenant_id"))
        batch_op.drop_index("ix_vms_state")

    op.drop_table("vms")
