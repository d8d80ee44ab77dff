"""The scheduler's observer in this process: metrics always, traces when configured, log context.

One object behind ``scheduler.observe.TaskObserver`` that hands each event to the
process's metrics (``runtime.metrics``), its traces (``runtime.tracing``, only when a
tracer provider is installed) and its logs (``runtime.logs``: the task, tenant and
agent on every line its handler logs, and one line per settled task).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from common.errors import CloudSkillsError
from runtime import logs, tracing
from runtime.metrics import Metrics
from scheduler.pricing import Usage

if TYPE_CHECKING:
    from runtime.app import App

log = logging.getLogger("cloudskills.tasks")


class Running(AbstractContextManager[object]):
    """Around a task's handler: its log context, and its run span made current."""

    __slots__ = ("run", "task", "telemetry", "token", "traced")

    def __init__(self, telemetry: Telemetry, task: Any) -> None:
        self.telemetry, self.task = telemetry, task

    def __enter__(self) -> object:
        task = self.task
        self.token = logs.TASK.set((task.id, task.tenant_id, task.agent))
        tracer = self.telemetry.tracing
        self.traced = tracer.begin_run(task) if tracer is not None else None
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        logs.TASK.reset(self.token)
        tracer = self.telemetry.tracing
        if tracer is not None and self.traced is not None:
            tracer.end_run(self.task.id, *self.traced)


class Telemetry:
    def __init__(self, metrics: Metrics, traced: bool) -> None:
        self.metrics = metrics
        self.tracing = tracing.TaskTracing() if traced else None

    @classmethod
    def install(cls, app: App) -> Telemetry:
        """The observer of ``app``'s scheduler: traces if the process traces (``tracing.configure``)."""
        telemetry = cls(Metrics(app), tracing.configure(app.settings.otlp_endpoint))
        app.scheduler.observer = telemetry
        return telemetry

    def admitted(self, task_id: str, skill: str, op: str, tenant_id: str, agent: str | None, since_ns: int) -> None:
        self.metrics.tasks.admitted(task_id, since_ns)
        if self.tracing is not None:
            self.tracing.admitted(task_id, skill, op, tenant_id, agent, since_ns)

    def refused(self, skill: str, op: str, tenant_id: str, error: CloudSkillsError, since_ns: int) -> None:
        self.metrics.tasks.refused(skill, op, error)
        if self.tracing is not None:
            self.tracing.refused(skill, op, tenant_id, error, since_ns)
        log.info("refused %s.%s: %s", skill, op, error.code, extra={"tenant": tenant_id, "reason": error.code})

    def running(self, task: Any) -> AbstractContextManager[object]:
        return Running(self, task)

    def settled(
        self, task_id: str, task: Any, state: str, cost_micros: int, usage: Usage, error: CloudSkillsError | None
    ) -> None:
        now = time.time_ns()
        self.metrics.tasks.settled(task_id, task.skill, task.op, state, now)
        if self.tracing is not None:
            self.tracing.settled(task_id, state, cost_micros, error)
        if log.isEnabledFor(logging.INFO):
            fields = {"task_id": task_id, "tenant": task.tenant_id, "agent": task.agent, "skill": task.skill}
            fields |= {"op": task.op, "state": state, "cost_micros": cost_micros}
            log.info("task %s %s.%s %s", task_id, task.skill, task.op, state, extra=fields)
