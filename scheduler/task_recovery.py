"""What dead servers left among the tasks, judged in one transaction (``Scheduler.recover``).

A task is a dead server's when its worker is not alive. Its running tasks run
again when their op is idempotent and their arguments were kept (or travel in
the payload of a routed task), and fail otherwise: they stopped midway. Its
queued tasks run again when their arguments were kept. A task routed to another
place (``scheduler.routing``) is claimed by that place's servers, with its
payload, while one lives, and fails when none does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import BackendUnavailable
from scheduler.models import Task

STOPPED_WHILE_RUNNING = "the server stopped while this task ran; nothing was charged: run it again."
STOPPED_UNKEPT = (
    "the server stopped before this task ran, and its arguments (file contents, secrets) are never kept; "
    "nothing was charged: call it again."
)
NO_SERVER_THERE = (
    "no server is running on the machine where this task's resource lives; nothing was charged: start one "
    "there, then call again."
)


@dataclass
class Orphans:
    requeue: list[str] = field(default_factory=list)  # to run again here, oldest first
    tenant_of: dict[str, str] = field(default_factory=dict)  # each requeued task's tenant
    failed: list[str] = field(default_factory=list)  # stopped while running
    unkept: list[str] = field(default_factory=list)  # queued, with arguments that were not kept
    gone: list[str] = field(default_factory=list)  # routed to a place where no server lives

    def errors(self) -> list[tuple[str, BackendUnavailable]]:
        """Each task to fail, with what its caller is told."""
        return [
            (task_id, BackendUnavailable(message))
            for ids, message in (
                (self.failed, STOPPED_WHILE_RUNNING),
                (self.unkept, STOPPED_UNKEPT),
                (self.gone, NO_SERVER_THERE),
            )
            for task_id in ids
        ]


def judge(session: Session, alive: set[str], places: set[str]) -> Orphans:
    """The dead workers' tasks, sorted by what becomes of them; a running one to run again
    is put back in the queue here, in the caller's transaction."""
    orphaned = Task.worker_id.is_(None) | Task.worker_id.not_in(alive)
    found = Orphans()
    for task in session.scalars(select(Task).where(Task.state == "running", orphaned)).all():
        if task.place is not None and task.place not in places:
            found.gone.append(task.id)
        elif task.idempotent and task.attempts < task.max_attempts and (task.args_whole or task.place):
            task.state = "queued"  # taken below, with the queued ones
        else:
            found.failed.append(task.id)
    queued = session.scalars(select(Task).where(Task.state == "queued", orphaned).order_by(Task.created_at))
    for task in queued:
        if task.place is not None:  # its place's router claims it, with its payload
            if task.place not in places:
                found.gone.append(task.id)
            continue
        (found.requeue if task.args_whole else found.unkept).append(task.id)
        found.tenant_of[task.id] = task.tenant_id
    return found
