"""What the scheduler runs and hands back: an op's binding, a task's context and outcome.

The scheduler names no resource kind and no op: a skill binds each op (its
handler, deadline and worst case) and the scheduler runs it as a task. An op's
arguments and result cross as objects (pydantic models from the call path);
only the store sees their JSON, dumped once when the task is written and once
when it settles.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.errors import CloudSkillsError, error_from_code
from scheduler.models import Task
from scheduler.pricing import Usage
from scheduler.resources import Services

T = TypeVar("T")

# progress so far (a count, e.g. tokens) and a message (e.g. the text just produced)
Progress = Callable[[float, str | None], Awaitable[None]]


@dataclass(frozen=True)
class RateLimited:
    """A progress listener that wants at most one report per ``every`` seconds: MCP's, whose
    spec asks senders to rate-limit progress notifications (each costs the server and the
    client the same whatever it holds). A handler that streams text gathers what comes in
    between into one report (``TextReports``)."""

    listener: Progress
    every: float

    async def __call__(self, progress: float, message: str | None) -> None:
        await self.listener(progress, message)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def as_json(value: Any) -> dict[str, Any]:
    """An op's arguments or result as the store keeps them."""
    dump = getattr(value, "model_dump", None)
    return dict(dump(mode="json")) if dump is not None else dict(value)


@dataclass
class TaskContext:
    """What a handler gets besides its arguments."""

    task_id: str
    tenant_id: str
    services: Services | None = None
    # The tenant's agent that made the call (an API key's or a stdio server's name), if named.
    agent: str | None = None
    usage: Usage = field(default_factory=Usage)
    # Tells the caller how the task is going (MCP progress); a no-op when no one listens.
    progress: Progress | None = None

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def service(self, kind: type[T]) -> T:
        """The process's service of this type (``ctx.service(SomeManager)``)."""
        assert self.services is not None, "this task runs without the process's services"
        return self.services.get(kind)

    @property
    def progress_every(self) -> float:
        """The fewest seconds the listener wants between two reports (0: as they come)."""
        return self.progress.every if isinstance(self.progress, RateLimited) else 0.0

    async def report(self, progress: float, message: str | None = None) -> None:
        if self.progress is not None:
            await self.progress(progress, message)


Handler = Callable[[TaskContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class OpBinding:
    """How the scheduler runs one op: its handler, deadline and worst-case usage, each
    on the op's arguments as the caller validated them. ``load`` rebuilds those
    arguments from the store (a task queued again after a restart).

    ``always_admitted`` ops (reads, lists, deletes, cancels) are never refused for
    money: they hold nothing, and their fee is waived when the budget cannot cover it,
    so they can only lower what a tenant spends."""

    skill: str
    op: str
    handler: Handler
    idempotent: bool = False
    timeout_s: Callable[[Any], float] = lambda args: 60.0
    worst_case: Callable[[Any], Usage] = lambda args: Usage()
    load: Callable[[dict[str, Any]], Any] = lambda stored: stored
    always_admitted: bool = False
    # The stored result carries the task's id and cost beside the op's own output.
    envelope: bool = True
    # Keys whose values a task row never keeps (see scheduler.task_details).
    secret: frozenset[str] = frozenset()
    # Whether the whole result is kept (until the details' retention ends): for a call
    # an MCP task handle may be polled for.
    keeps_result: Callable[[Any], bool] = lambda args: False
    # What of its arguments a call refused for money can lower (a 402's advice); None where
    # its hold is its fee alone, or nothing it asks for changes it.
    ask_less: str | None = None

    @property
    def key(self) -> str:
        return f"{self.skill}.{self.op}"


@dataclass(frozen=True)
class TaskOutcome:
    """A finished task. ``result`` is the op's result as stored, with ``task_id`` and
    ``cost`` added; ``output`` is the handler's own object when it ran in this process."""

    task_id: str
    state: str
    result: dict[str, Any] | None
    error: CloudSkillsError | None
    cost_micros: int
    output: Any = None

    def unwrap(self) -> dict[str, Any]:
        """The result, or the task's error raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def outcome_of(task: Task) -> TaskOutcome:
    error = error_from_code(task.error_code, task.error_message or "") if task.error_code else None
    return TaskOutcome(task.id, task.state, task.result, error, task.cost_micros)


class TextReports:
    """Text a task streams to its listener as it is produced: a report per piece, but at
    most one per ``ctx.progress_every`` seconds, what comes in between joined into the
    next (the first at once); ``flush`` sends what waits. The progress is the count of
    reports sent."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.held: list[str] = []
        self.sent = 0
        self.sent_at = 0.0

    async def add(self, text: str) -> None:
        self.held.append(text)
        if not self.sent or time.monotonic() - self.sent_at >= self.ctx.progress_every:
            await self.flush()

    async def flush(self) -> None:
        if not self.held:
            return
        text = "".join(self.held)
        self.held.clear()
        self.sent += 1
        self.sent_at = time.monotonic()
        await self.ctx.report(self.sent, text)
