"""Waiting for what no event announces (Docker's state, another process), bounded in time."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` naming ``what``."""
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - Docker has no event we could wait on
            await anyio.sleep(0.05)
