"""Traces with OpenTelemetry: one span per task, its phases as children.

    tools/call sandbox_run        the MCP SDK's server span, a child of the trace context
    └─ task sandbox.run           the client sent in the request's ``_meta`` (if any)
       ├─ admission               quotas, the hold, the task's row: one transaction
       ├─ run                     the handler; a skill's own spans nest inside it
       │  ├─ placement            (a sandbox: claimed warm, or started cold)
       │  └─ exec
       └─ settlement              final state, ledger, release: one transaction

Spans go to the process's tracer provider. ``configure`` installs the SDK's, with
an OTLP/HTTP exporter, when an endpoint is set (``otlp_endpoint`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``); otherwise there is none, the task observer is
not installed, and the skills' spans are the API's no-ops.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from common.errors import CloudSkillsError

log = logging.getLogger("cloudskills.tracing")


def configure(endpoint: str | None) -> bool:
    """Install the SDK's tracer provider exporting to ``endpoint`` over OTLP/HTTP, once per
    process; whether the process traces (a provider installed earlier, by a test, counts)."""
    if enabled():
        return True
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "cloudskills"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)
    log.info("exporting traces to %s", endpoint)
    return True


def enabled() -> bool:
    return isinstance(trace.get_tracer_provider(), TracerProvider)


class TaskTracing:
    """The scheduler's observer for traces (through ``runtime.telemetry``)."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("cloudskills.scheduler")
        # Open task spans, and when each task's run ended (where its settlement starts).
        self._spans: dict[str, Span] = {}
        self._ran: dict[str, int] = {}

    def admitted(self, task_id: str, skill: str, op: str, tenant_id: str, agent: str | None, since_ns: int) -> None:
        span = self._task_span(task_id, skill, op, tenant_id, agent, since_ns)
        self._phase(span, "admission", since_ns).end()
        self._spans[task_id] = span

    def refused(self, skill: str, op: str, tenant_id: str, error: CloudSkillsError, since_ns: int) -> None:
        span = self._task_span(None, skill, op, tenant_id, None, since_ns)
        admission = self._phase(span, "admission", since_ns)
        for refused in (admission, span):
            refused.set_status(Status(StatusCode.ERROR, error.code))
            refused.set_attribute("cloudskills.refused", error.code)
            refused.end()

    def begin_run(self, task: Any) -> tuple[Span, object]:
        """The run span, made current for the handler; ``end_run`` with what this returns."""
        span = self._spans.get(task.id)
        if span is None:  # queued by another process, or before a restart
            span = self._task_span(task.id, task.skill, task.op, task.tenant_id, task.agent, time.time_ns())
            self._spans[task.id] = span
        run = self._phase(span, "run")
        return run, context.attach(trace.set_span_in_context(run))

    def end_run(self, task_id: str, run: Span, token: object) -> None:
        context.detach(token)  # type: ignore[arg-type]
        run.end()
        self._ran[task_id] = time.time_ns()

    def settled(self, task_id: str, state: str, cost_micros: int, error: CloudSkillsError | None) -> None:
        span = self._spans.pop(task_id, None)
        since = self._ran.pop(task_id, None)
        if span is None:
            return
        self._phase(span, "settlement", since).end()
        span.set_attributes({"cloudskills.state": state, "cloudskills.cost_micros": cost_micros})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error.code))
        span.end()

    def _task_span(
        self, task_id: str | None, skill: str, op: str, tenant_id: str, agent: str | None, since_ns: int
    ) -> Span:
        attributes = {"cloudskills.skill": skill, "cloudskills.op": op, "cloudskills.tenant": tenant_id}
        if task_id is not None:
            attributes["cloudskills.task_id"] = task_id
        if agent is not None:
            attributes["cloudskills.agent"] = agent
        return self.tracer.start_span(f"task {skill}.{op}", start_time=since_ns, attributes=attributes)

    def _phase(self, task_span: Span, name: str, since_ns: int | None = None) -> Span:
        return self.tracer.start_span(name, context=trace.set_span_in_context(task_span), start_time=since_ns)
