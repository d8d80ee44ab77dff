"""Replicas sharing one store (issue 20), on a real SQLite store: a worker is dead once its
heartbeat lapses or, on this host, once its process is gone; recovery settles only dead
workers' tasks, never a live replica's; one worker at a time leads a duty, and another takes
it over once the lead lapses. The same runs on PostgreSQL in tests/skills/test_replicas.py."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from scheduler.models import Task, Worker, utcnow
from scheduler.store import Store
from scheduler.workers import Workers
from tests.scheduler.test_tasks import OK, scheduler_on

pytestmark = pytest.mark.anyio


def lapse(store: Store, worker_id: str, seconds: float) -> None:
    with store.transaction() as session:
        worker = session.get(Worker, worker_id)
        assert worker is not None
        worker.heartbeat_at = utcnow() - timedelta(seconds=seconds)


def test_a_worker_is_dead_when_its_heartbeat_lapses_or_its_process_is_gone(store: Store) -> None:
    me, other, gone = Workers(store, "w-me"), Workers(store, "w-other"), Workers(store, "w-gone")
    for worker in (me, other, gone):
        worker.register()
    ended = subprocess.Popen(["true"])
    ended.wait()
    with store.transaction() as session:
        row = session.get(Worker, "w-gone")
        assert row is not None
        row.pid = ended.pid  # a process of this host that has exited: dead without waiting
    assert me.dead() == {"w-gone"} and me.alive() == {"w-me", "w-other"}
    lapse(store, "w-other", 11.0)
    assert me.dead() == {"w-gone", "w-other"}
    other.beat()
    assert me.dead() == {"w-gone"}
    other.leave()
    assert me.alive() == {"w-me"}


def test_one_worker_leads_a_duty_until_its_lead_lapses(store: Store) -> None:
    first, second = Workers(store, "w-1"), Workers(store, "w-2")
    assert first.lead("duties", 10.0) and first.lead("duties", 10.0)
    assert not second.lead("duties", 10.0)
    assert second.lead("reports", 10.0)  # each duty has its own leader
    first.lead("duties", -1.0)  # as if its last renewal had lapsed
    assert second.lead("duties", 10.0) and not first.lead("duties", 10.0)
    second.leave()
    assert first.lead("duties", 10.0)


def test_recovery_settles_a_dead_workers_tasks_and_never_a_live_ones(store: Store) -> None:
    alive, dead, survivor = scheduler_on(store), scheduler_on(store), scheduler_on(store)
    mine = alive.submit("acme", OK, {"value": 1})
    theirs = dead.submit("acme", OK, {"value": 2})
    with store.transaction() as session:  # both running, as their workers claimed them
        for task_id in (mine, theirs):
            task = session.get(Task, task_id)
            assert task is not None
            task.state, task.attempts = "running", 1
    assert survivor.recover({survivor.worker_id, alive.worker_id}) == [theirs]
    with store.transaction() as session:
        states = {task_id: session.get(Task, task_id).state for task_id in (mine, theirs)}  # type: ignore[union-attr]
    assert states == {mine: "running", theirs: "failed"}
