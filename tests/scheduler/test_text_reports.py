"""Text a task streams to its listener: a report per piece, or, for a listener that asks
for it (MCP's), at most one per interval with what came in between joined."""

from __future__ import annotations

import pytest

from scheduler.tasks import RateLimited, TaskContext, TextReports

pytestmark = pytest.mark.anyio


def listening(every: float | None) -> tuple[TaskContext, list[tuple[float, str | None]]]:
    got: list[tuple[float, str | None]] = []

    async def listener(progress: float, message: str | None) -> None:
        got.append((progress, message))

    progress = listener if every is None else RateLimited(listener, every)
    return TaskContext("task_1", "tenant", progress=progress), got


async def test_each_piece_is_a_report_for_a_listener_that_sets_no_rate() -> None:
    ctx, got = listening(None)
    assert ctx.progress_every == 0.0
    reports = TextReports(ctx)
    for piece in ("a", "b", "c"):
        await reports.add(piece)
    await reports.flush()
    assert got == [(1, "a"), (2, "b"), (3, "c")]


async def test_a_rate_limited_listener_gets_the_first_piece_at_once_and_the_rest_joined_when_due() -> None:
    ctx, got = listening(3600.0)
    assert ctx.progress_every == 3600.0
    reports = TextReports(ctx)
    for piece in ("a", "b", "c"):
        await reports.add(piece)
    assert got == [(1, "a")], "the rest waits for the interval (an hour)"
    reports.sent_at -= 3600
    await reports.add("d")
    await reports.add("e")
    assert got == [(1, "a"), (2, "bcd")]
    await reports.flush()
    await reports.flush()
    assert got == [(1, "a"), (2, "bcd"), (3, "e")], "flush sends what waits, once"


async def test_nobody_listening_costs_nothing() -> None:
    reports = TextReports(TaskContext("task_1", "tenant"))
    await reports.add("a")
    await reports.flush()
    assert reports.sent == 1
