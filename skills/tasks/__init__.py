"""The tasks skill: every call is a task; list, inspect and cancel your own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from scheduler.models import Task
from scheduler.store import Store
from scheduler.tasks import Scheduler, TaskContext
from skills.base import Money, Op, OpInput
from skills.registry import skill_from_doc

State = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
TASK_ID = Field(description="The task_id a tool call returned, e.g. 't_0123abcd4567ef89'.")


class TaskError(BaseModel):
    code: str
    message: str


class TaskInfo(BaseModel):
    task_id: str
    tool: str
    state: State
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    cost: Money
    error: TaskError | None


class TaskDetail(TaskInfo):
    result: dict[str, Any] | None = Field(description="The tool's result once the task succeeded.")


class ListInput(OpInput):
    state: State | None = Field(default=None, description="Only tasks in this state.")
    limit: int = Field(default=50, ge=1, le=500)


class ListOutput(BaseModel):
    tasks: list[TaskInfo]


class GetInput(OpInput):
    task_id: str = TASK_ID


class CancelInput(OpInput):
    task_id: str = TASK_ID


def info(ctx: TaskContext, task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "tool": f"{task.skill}_{task.op}",
        "state": task.state,
        "created_at": task.created_at.isoformat(),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "attempts": task.attempts,
        "cost": ctx.service(Scheduler).money(task.cost_micros),
        "error": {"code": task.error_code, "message": task.error_message or ""} if task.error_code else None,
    }


async def list_(ctx: TaskContext, args: ListInput) -> ListOutput:
    """The caller's tasks, newest first (this call itself is left out)."""
    store = ctx.service(Store)
    query = select(Task).where(Task.tenant_id == ctx.tenant_id, Task.id != ctx.task_id)
    if args.state is not None:
        query = query.where(Task.state == args.state)
    with store.transaction() as session:
        tasks = session.scalars(query.order_by(Task.created_at.desc()).limit(args.limit)).all()
        return ListOutput(tasks=[TaskInfo(**info(ctx, t)) for t in tasks])


async def get(ctx: TaskContext, args: GetInput) -> TaskDetail:
    """One of the caller's tasks, with its result or error."""
    task = ctx.service(Scheduler).get(ctx.tenant_id, args.task_id)
    return TaskDetail(**info(ctx, task), result=task.result)


async def cancel(ctx: TaskContext, args: CancelInput) -> TaskDetail:
    """Cancel one of the caller's queued or running tasks."""
    scheduler = ctx.service(Scheduler)
    await scheduler.cancel(ctx.tenant_id, args.task_id)
    task = scheduler.get(ctx.tenant_id, args.task_id)
    return TaskDetail(**info(ctx, task), result=task.result)


SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "list",
            "Your recent tasks, newest first.",
            ListInput,
            ListOutput,
            list_,
            read_only=True,
            idempotent=True,
            envelope=False,
        ),
        Op(
            "get",
            "One task: state, timing, cost, and its result or error.",
            GetInput,
            TaskDetail,
            get,
            read_only=True,
            envelope=False,
            idempotent=True,
        ),
        Op(
            "cancel",
            "Cancel a queued or running task; what it used so far is billed.",
            CancelInput,
            TaskDetail,
            cancel,
            destructive=True,
            releases=True,
            envelope=False,
            idempotent=True,
        ),
    ),
)
