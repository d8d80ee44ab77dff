"""The database skill: real SQLite and PostgreSQL instances, queried and backed up."""

from __future__ import annotations

from skills.base import Op
from skills.db import models as m
from skills.db import ops
from skills.db.instances import QUOTA, from_platform
from skills.registry import skill_from_doc

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "create",
            "Provision a database (engine 'sqlite' or 'postgres'); returns db_id and a connection string once it "
            "accepts connections.",
            m.CreateInput,
            m.CreateOutput,
            ops.create,
            timeout_s=lambda a: 120.0,
            runs_long=lambda a: a.engine != "sqlite",
        ),
        Op(
            "list",
            "List your databases.",
            m.ListInput,
            m.ListOutput,
            ops.list_,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "describe",
            "A database's engine, size, state, connection string and snapshots.",
            m.DescribeInput,
            m.DescribeOutput,
            ops.describe,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "query",
            "Run one SQL statement with bound params; returns columns, rows (cut at max_rows) and rowcount.",
            m.QueryInput,
            m.QueryOutput,
            ops.query,
            timeout_s=ops.query_timeout,
        ),
        Op(
            "export",
            "Write a read-only query's rows as a CSV file (header row, RFC 4180, NULL as an empty field) into a "
            "workspace.",
            m.ExportInput,
            m.ExportOutput,
            ops.export,
            idempotent=True,
            timeout_s=ops.query_timeout,
        ),
        Op(
            "import",
            "Insert the rows of a CSV file of a workspace into an existing table (its header names the columns): "
            "all rows in one transaction, or none.",
            m.ImportInput,
            m.ImportOutput,
            ops.import_,
            timeout_s=ops.query_timeout,
        ),
        Op(
            "schema",
            "A database's tables and views with their columns, types and indexes.",
            m.SchemaInput,
            m.SchemaOutput,
            ops.schema,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "backup",
            "Take a snapshot of the whole database; returns snapshot_id.",
            m.BackupInput,
            m.BackupOutput,
            ops.backup,
            timeout_s=lambda a: 600.0,
            runs_long=lambda a: True,
        ),
        Op(
            "restore",
            "Replace the database's whole content with a snapshot taken by db_backup.",
            m.RestoreInput,
            m.RestoreOutput,
            ops.restore,
            destructive=True,
            idempotent=True,
            confirm=True,
            timeout_s=lambda a: 600.0,
            runs_long=lambda a: True,
        ),
        Op(
            "delete",
            "Delete a database, its data and its snapshots; deleting one already deleted succeeds.",
            m.DeleteInput,
            m.DeleteOutput,
            ops.delete,
            destructive=True,
            releases=True,
            idempotent=True,
            confirm=True,
            timeout_s=lambda a: 120.0,
        ),
    ),
    resource=from_platform,
    quota=QUOTA,
    host_bound=("db_id",),
)
