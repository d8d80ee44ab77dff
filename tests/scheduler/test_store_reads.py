"""A read-only transaction takes no write lock on SQLite: a key check (every HTTP
request's first step) answers while another process holds the store's write lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from runtime.tenants import caller_of_key, create_key
from scheduler.models import Tenant
from scheduler.store import Store

# Another process's writer, mid-transaction until told to commit (a line on its stdin).
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE tenants SET budget_micros = 5 WHERE id = 'acme'")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


def test_a_key_is_checked_while_another_process_holds_the_write_lock(store: Store, tmp_path: Path) -> None:
    key = create_key(store, "acme").key
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "db.sqlite")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        caller = caller_of_key(store, key)
        assert caller is not None and caller.tenant_id == "acme"
        with store.reading() as session:  # the snapshot before the writer's commit
            assert session.scalar(select(Tenant.budget_micros).where(Tenant.id == "acme")) != 5
    finally:
        writer.communicate("commit\n", timeout=30)
    assert writer.returncode == 0
    with store.reading() as session:
        assert session.scalar(select(Tenant.budget_micros).where(Tenant.id == "acme")) == 5
