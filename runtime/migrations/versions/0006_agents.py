"""agents: a tenant's agents are named on keys, tasks, leases and ledger entries

An API key may name the agent it speaks for (``keys create --agent planner``);
every task records the agent that called it, every lease the agent whose call
made its resource, and every ledger entry the agent it is charged to, so
``billing_usage`` can group by agent. Rows from before have no agent (NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("api_keys", "tasks", "leases", "ledger")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("agent", sa.String(length=64), nullable=True))
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_tenant_agent", ["tenant_id", "agent"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_tenant_agent")
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("agent")
