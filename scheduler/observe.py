"""What the scheduler tells whoever watches its tasks: a port for metrics, traces and logs.

The scheduler names no metrics or tracing library. At the edges of a task's
phases it calls its ``TaskObserver`` with what it already has in hand (ids, op,
state, cost, usage, a wall-clock stamp), and the process turns that into
Prometheus samples, OpenTelemetry spans and log lines (``runtime/telemetry.py``).

    submit ─ admission ─▶ admitted | refused
    _run   ─ running(task) around the handler (placement and run happen inside)
    _finish ─ settlement ─▶ settled

``NO_OBSERVER`` does nothing and is the default: a scheduler nobody watches
pays a few method calls per task. A long-lived kind's manager reports what only
it knows (a warm pool's size, claims and misses) as ``Sample``s from a
``samples()`` method, which the process reads when it is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from common.errors import CloudSkillsError
from scheduler.pricing import Usage


class TaskObserver(Protocol):
    """Called by the scheduler on its own path: each hook must be quick and never raise."""

    def admitted(self, task_id: str, skill: str, op: str, tenant_id: str, agent: str | None, since_ns: int) -> None:
        """The task passed admission (``since_ns``: when its submission began, ``time.time_ns()``)."""
        ...

    def refused(self, skill: str, op: str, tenant_id: str, error: CloudSkillsError, since_ns: int) -> None:
        """Admission refused a call (budget, quota, unknown tenant): no task was stored."""
        ...

    def running(self, task: Any) -> AbstractContextManager[object]:
        """Entered around the handler, in the task's own context (``task``: the claimed task,
        with ``id``, ``tenant_id``, ``agent``, ``skill`` and ``op``)."""
        ...

    def settled(
        self, task_id: str, task: Any, state: str, cost_micros: int, usage: Usage, error: CloudSkillsError | None
    ) -> None:
        """The task reached its final state and its money settled, in one transaction that began when
        ``running`` was left (or now, for a task that never ran: cancelled while queued, failed on restart)."""
        ...


class NoObserver:
    """The default: nobody watches."""

    _nothing: AbstractContextManager[object] = nullcontext()

    def admitted(self, task_id: str, skill: str, op: str, tenant_id: str, agent: str | None, since_ns: int) -> None:
        pass

    def refused(self, skill: str, op: str, tenant_id: str, error: CloudSkillsError, since_ns: int) -> None:
        pass

    def running(self, task: Any) -> AbstractContextManager[object]:
        return self._nothing

    def settled(
        self, task_id: str, task: Any, state: str, cost_micros: int, usage: Usage, error: CloudSkillsError | None
    ) -> None:
        pass


NO_OBSERVER = NoObserver()


@dataclass(frozen=True)
class Sample:
    """One reading a service reports about itself: ``name`` without the process's prefix
    (``pool_ready``), a gauge (a level now) or a counter (a total since the process started)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    value: float
    labels: Mapping[str, str]


@runtime_checkable
class Reports(Protocol):
    """A service with readings of its own (a kind's manager with a warm pool)."""

    def samples(self) -> Iterable[Sample]: ...
