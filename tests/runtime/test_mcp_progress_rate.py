"""MCP progress notifications are rate-limited, as the MCP spec asks of senders."""

from __future__ import annotations

from runtime.server import MCP_PROGRESS_EVERY, progress_to
from scheduler.tasks import RateLimited


def test_mcp_progress_is_rate_limited_to_ten_a_second() -> None:
    class Context:
        async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
            pass

    progress = progress_to(Context())  # type: ignore[arg-type]
    assert isinstance(progress, RateLimited) and progress.every == MCP_PROGRESS_EVERY == 0.1
    assert progress_to(None) is None
