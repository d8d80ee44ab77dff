"""Upgrading a store keeps its money and shrinks what it should never have kept."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from sqlalchemy import text

from runtime.storage import alembic_config, open_store
from scheduler.models import Task
from scheduler.store import Store

BIG = "y" * 1_000_000


def test_an_older_store_loses_contents_and_secrets_and_shrinks_on_disk(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store(url)
    with old.engine.begin() as connection:
        config = alembic_config(old)
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        connection.execute(
            text(
                "INSERT INTO tenants (id, name, created_at, spent_micros, held_micros, "
                "active_tasks, window_minute, window_tasks, max_concurrent_tasks, tasks_per_minute, "
                "tokens_per_minute) VALUES ('acme', 'acme', '2026-11-30', 5, 0, 0, 0, 0, 64, 1200, 1)"
            )
        )
        for n in range(20):
            args = {"path": "big.bin", "content": BIG, "env": {"TOKEN": "s3cret"}}
            connection.execute(
                text(
                    "INSERT INTO tasks (id, tenant_id, skill, op, args, state, idempotent, timeout_s, attempts, "
                    "max_attempts, created_at, result, hold_micros, cost_micros) VALUES (:id, 'acme', 'sandbox', "
                    "'write_file', :args, 'succeeded', 1, 60, 1, 2, '2026-11-30', :result, 0, 20)"
                ),
                {"id": f"t_{n}", "args": json.dumps(args), "result": json.dumps({"content": BIG})},
            )
    old.close()
    before = sum(p.stat().st_size for p in tmp_path.glob("old.db*"))
    store = open_store(url)
    with store.transaction() as session:
        task = session.get(Task, "t_3")
        assert task is not None and task.cost_micros == 20 and not task.args_whole
        assert BIG not in json.dumps(task.args) and "s3cret" not in json.dumps(task.args)
        assert task.result is not None and BIG not in json.dumps(task.result)
    store.close()
    after = sum(p.stat().st_size for p in tmp_path.glob("old.db*"))
    assert before > 20_000_000 and after < 1_000_000, (before, after)
