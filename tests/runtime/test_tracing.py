"""A trace of one ``sandbox_run``: the task's span, under the client's trace context sent in the
request's ``_meta``, with its phases (admission, run with placement and exec inside, settlement)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.errors import BudgetExceeded
from runtime import tracing
from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import create_tenant
from sandbox.docker import DockerDriver
from tests.mcp_helpers import call, mcp_client

pytestmark = pytest.mark.anyio

EXPORTER = InMemorySpanExporter()
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, recording in memory (installed once: a process has one);
    the apps made after it trace their tasks."""
    if not tracing.enabled():
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def children(of: ReadableSpan, finished: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished if s.parent is not None and s.parent.span_id == of.context.span_id}


@pytest.mark.docker
async def test_a_sandbox_run_traces_its_phases(spans: InMemorySpanExporter, app: App) -> None:
    assert app.telemetry.tracing is not None, "an app made while the process traces traces its tasks"
    meta = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    async with mcp_client(app) as client:
        result = await client.call_tool("sandbox_run", {"code": "print(6 * 7)"}, meta=meta)  # type: ignore[arg-type]
    assert not result.is_error and result.structured_content is not None
    task_id = result.structured_content["task_id"]

    finished = list(spans.get_finished_spans())
    task = next(s for s in finished if s.name == "task sandbox.run")
    assert task.attributes is not None and task.attributes["cloudskills.task_id"] == task_id
    assert task.attributes["cloudskills.state"] == "succeeded"
    assert task.attributes["cloudskills.cost_micros"] == result.structured_content["cost"]["micros"]
    # The client's trace, through the MCP SDK's span for the request.
    assert task.context.trace_id == int(CLIENT_TRACE, 16)
    request = next(s for s in finished if task.parent is not None and s.context.span_id == task.parent.span_id)
    assert request.name == "tools/call sandbox_run"
    assert request.parent is not None and request.parent.span_id == int(CLIENT_SPAN, 16)

    phases = children(task, finished)
    assert set(phases) == {"admission", "run", "settlement"}
    assert set(children(phases["run"], finished)) == {"placement", "exec"}
    ordered = sorted(phases.values(), key=lambda s: s.start_time or 0)
    assert [s.name for s in ordered] == ["admission", "run", "settlement"]
    for earlier, later in pairwise(ordered):
        assert (earlier.end_time or 0) <= (later.start_time or 0)
    assert (task.start_time or 0) <= (ordered[0].start_time or 0)
    assert (ordered[-1].end_time or 0) <= (task.end_time or 0)


async def test_a_refusal_is_traced_as_a_failed_admission(spans: InMemorySpanExporter, settings: Settings) -> None:
    application = App(settings, DockerDriver("unix:///nonexistent.sock"))
    try:
        create_tenant(application.store, "lean", budget_micros=1)
        async with application.running(serving=False), mcp_client(application, tenant="lean") as client:
            error = await client.call_tool("db_create", {"engine": "sqlite"})
            assert error.is_error
            with pytest.raises(BudgetExceeded):
                await application.call("lean", "db_create", {"engine": "sqlite"})
            await call(client, "billing_balance")
    finally:
        application.close()
    finished = list(spans.get_finished_spans())
    refused = [s for s in finished if s.name == "task db.create"]
    assert len(refused) == 2
    for span in refused:
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.attributes is not None and span.attributes["cloudskills.refused"] == "budget_exceeded"
        assert set(children(span, finished)) == {"admission"}
    assert any(s.name == "task billing.balance" for s in finished)
