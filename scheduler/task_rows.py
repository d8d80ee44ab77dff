"""The task rows' hot statements, built once, and what a claimed task carries.

Every task runs these, so they are plain SQL (see ledger.py for the money's):
the ORM's unit of work was most of a task's overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, null, select, update

from scheduler.models import Task

INSERT_TASK = insert(Task)
_TAKE = (
    update(Task)
    .where(Task.id == bindparam("task_id"), Task.state == "queued")
    .values(state="running", started_at=bindparam("now"), attempts=Task.attempts + 1, worker_id=bindparam("worker_id"))
)
_CLAIMED = (Task.id, Task.tenant_id, Task.skill, Task.op, Task.args, Task.timeout_s, Task.hold_micros, Task.agent)
CLAIM = _TAKE.returning(*_CLAIMED)
# A task routed here from another place (``scheduler.routing``): with its whole arguments.
CLAIM_ROUTED = _TAKE.returning(*_CLAIMED, Task.payload)
SETTLING = select(Task.tenant_id, Task.skill, Task.op, Task.hold_micros, Task.agent).where(
    Task.id == bindparam("task_id")
)
FINISH = (
    update(Task)
    # finished_at is set exactly when a task reaches a final state (and, unlike an
    # IN over the active states, this guard compiles once for every call).
    .where(Task.id == bindparam("task_id"), Task.finished_at.is_(None))
    .values(
        state=bindparam("state"),
        finished_at=bindparam("now"),
        result=bindparam("result"),
        error_code=bindparam("error_code"),
        error_message=bindparam("error_message"),
        cost_micros=bindparam("cost"),
        payload=bindparam("payload"),
    )
)

# The details (arguments, result) of tasks finished before ``before`` are let go (Scheduler.prune).
PRUNE = (
    update(Task)
    .where(Task.finished_at < bindparam("before"), Task.result.is_not(None))
    .values(args={}, args_whole=False, result=null(), payload=null())
)


@dataclass(frozen=True)
class Claimed:
    """A task this process has marked running: what running and settling it needs."""

    id: str
    tenant_id: str
    skill: str
    op: str
    args: dict[str, Any]
    timeout_s: float
    hold_micros: int
    agent: str | None = None
