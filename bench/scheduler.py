"""No-op tasks per second through admission (quotas, budget hold), queue, worker and
settlement (ledger, release), on the embedded SQLite store.

    .venv/bin/python -m bench.scheduler [--tasks 2000] [--rounds 3]

Baseline, measured in the same run: the three bare transactions any durable task
needs on this store (insert the task, mark it running, append a ledger line and
finish it), with none of our logic: the floor our path is compared with.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import insert, update

from runtime.storage import open_store
from runtime.tenants import ensure_tenant
from scheduler.models import LedgerEntry, Task
from scheduler.pricing import PriceCatalog
from scheduler.store import Store
from scheduler.tasks import OpBinding, Scheduler, TaskContext, new_id


async def noop(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    return {}


NOOP = OpBinding("bench", "noop", noop)


def fresh_store(directory: str, name: str) -> Store:
    store = open_store(f"sqlite:///{Path(directory) / name}")
    ensure_tenant(store, "bench")
    with store.transaction() as session:
        from scheduler.models import Tenant

        tenant = session.get(Tenant, "bench")
        assert tenant is not None
        tenant.max_concurrent_tasks = tenant.tasks_per_minute = 10**9
    return store


async def through_scheduler(store: Store, tasks: int) -> float:
    scheduler = Scheduler(store, PriceCatalog.load(), concurrency=16)
    scheduler.bind(NOOP)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        start = time.perf_counter()
        async with anyio.create_task_group() as callers:
            for _ in range(tasks):
                callers.start_soon(scheduler.run, "bench", NOOP, {})
        elapsed = time.perf_counter() - start
        group.cancel_scope.cancel()
    return tasks / elapsed


def bare_transactions(store: Store, tasks: int) -> float:
    start = time.perf_counter()
    for _ in range(tasks):
        task_id = new_id("t")
        with store.transaction() as session:
            session.execute(
                insert(Task).values(id=task_id, tenant_id="bench", skill="b", op="n", args={}, timeout_s=1.0)
            )
        with store.transaction() as session:
            session.execute(update(Task).where(Task.id == task_id).values(state="running"))
        with store.transaction() as session:
            session.execute(
                insert(LedgerEntry).values(
                    idempotency_key=f"{task_id}:fee",
                    tenant_id="bench",
                    task_id=task_id,
                    skill="b",
                    op="n",
                    item="task_fee",
                    quantity=1,
                    amount_micros=20,
                    catalog_version="x",
                    day="2026-01-01",
                )
            )
            session.execute(update(Task).where(Task.id == task_id).values(state="succeeded"))
    return tasks / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ours, floor = [], []
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(args.rounds):
            ours.append(anyio.run(through_scheduler, fresh_store(directory, f"s{round_}.db"), args.tasks))
            floor.append(bare_transactions(fresh_store(directory, f"b{round_}.db"), args.tasks))
    print(
        f"scheduler no-op tasks/s (admission+queue+settlement): median {statistics.median(ours):7.0f}  "
        f"min-max {min(ours):.0f}-{max(ours):.0f}  ({args.tasks} tasks x {args.rounds} rounds)"
    )
    print(
        f"baseline: 3 bare transactions per task, tasks/s:      median {statistics.median(floor):7.0f}  "
        f"min-max {min(floor):.0f}-{max(floor):.0f}"
    )
    print(f"ratio ours/baseline: {statistics.median(ours) / statistics.median(floor):.2f}")


if __name__ == "__main__":
    main()
