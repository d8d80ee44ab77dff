"""task details: what a task row keeps of its call, never file contents or secret values

Adds ``tasks.args_whole`` and shrinks what stores kept until now: every task's
arguments and result become details (long strings cut to a preview with their
size, environment values and connection strings hidden). On SQLite the file is
compacted afterwards (``runtime.storage``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import context, op

from scheduler.task_details import summarize

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The fields that held secrets before ops marked them (skills.base.Secret).
SECRET_KEYS = ("env", "connection_string", "password")
BATCH = 500


def loaded(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("args_whole", sa.Boolean(), nullable=False, server_default=sa.true()))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, args, result FROM tasks")).all()
    for start in range(0, len(rows), BATCH):
        updates = []
        for task_id, args, result in rows[start : start + BATCH]:
            kept_args = summarize(loaded(args) or {}, SECRET_KEYS)
            kept_result = None if result is None else summarize(loaded(result), SECRET_KEYS).value
            if kept_args.whole and kept_result == loaded(result):
                continue
            updates.append(
                {
                    "id": task_id,
                    "args": json.dumps(kept_args.value),
                    "whole": kept_args.whole,
                    "result": None if kept_result is None else json.dumps(kept_result),
                }
            )
        if updates:
            bind.execute(
                sa.text("UPDATE tasks SET args = :args, args_whole = :whole, result = :result WHERE id = :id"),
                updates,
            )
    context.config.attributes["compact"] = True


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("args_whole")
