"""The thread that wakes event loops for a batch engine's decoding thread (llama_handover)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from skills.inference.engines.llama_handover import Handover

pytestmark = pytest.mark.anyio


async def test_items_reach_their_loop_in_order_from_the_handover_thread_and_close_drains() -> None:
    got: list[tuple[int, str]] = []
    done = anyio.Event()

    def deliver(items: list[int]) -> None:
        got.extend((item, threading.current_thread().name) for item in items)
        if got[-1][0] == 999:
            done.set()

    handover: Handover[int] = Handover(deliver)
    loop = asyncio.get_running_loop()
    for start in range(0, 1000, 10):
        handover.put([(loop, list(range(start, start + 10)))])
    with anyio.fail_after(10):
        await done.wait()
    await anyio.to_thread.run_sync(handover.close)
    assert [item for item, _ in got] == list(range(1000))
    assert {name for _, name in got} == {threading.current_thread().name}, "delivered on the loop"


async def test_a_closed_loop_is_skipped_and_the_others_still_get_theirs() -> None:
    closed = asyncio.new_event_loop()
    closed.close()
    got: list[str] = []
    handover: Handover[str] = Handover(got.extend)
    handover.put([(closed, ["lost"]), (asyncio.get_running_loop(), ["kept"])])
    assert handover.wait(10)
    await anyio.wait_all_tasks_blocked()
    handover.close()
    assert got == ["kept"]


async def test_without_a_thread_the_putting_thread_wakes_the_loop_itself(monkeypatch: Any) -> None:
    got: list[str] = []
    handover: Handover[str] = Handover(got.extend)

    def refuse() -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(handover._thread, "start", refuse)
    handover.put([(asyncio.get_running_loop(), ["a"])])
    handover.put([(asyncio.get_running_loop(), ["b"])])
    await anyio.wait_all_tasks_blocked()
    assert got == ["a", "b"]
    handover.close()
