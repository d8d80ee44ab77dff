"""database deleters: which server is removing a database that is being deleted

A database being deleted records the server (worker id) removing it, so the
reaper of another replica leaves that delete alone while its server lives,
instead of removing the same container at once (Docker refuses the second
removal, and the caller's delete failed). Rows from before have none (NULL):
any reaper finishes them, as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleting_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_column("deleting_by")
