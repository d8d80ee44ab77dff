"""How a batched request's text streams to its caller: the engine's pieces paced by how
many requests share it (no model: the decoding thread's side is played by ``deliver``);
and where its prompt is tokenized on the way in."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from common.errors import Cancelled
from skills.inference.engines.base import Completion, GenerateRequest, Message
from skills.inference.engines.llama_batch import Batcher, Sequence, deliver
from skills.inference.engines.llama_lanes import Lane

pytestmark = pytest.mark.anyio

Step = list[tuple[str, Any]]  # what one decoding step gives a sequence: its text, and its result or None
DONE = Completion(text="abcde", finish_reason="stop", prompt_tokens=3, cached_tokens=0, completion_tokens=5)


def sequence() -> Sequence:
    request = GenerateRequest(messages=[Message(role="user", content="hi")], max_tokens=8, temperature=0)
    return Sequence(Lane(0), [1, 2, 3], request)


async def follow_while(
    seq: Sequence, interval: float, steps: list[Step], interval_passes_at: int | None = None
) -> tuple[list[str], Any]:
    """Follow ``seq`` while each step's text (and at last its result) is delivered, a step
    each time the caller waits for the next; from step ``interval_passes_at`` on, the
    interval has passed. The pieces the caller got, and its outcome."""
    got: list[str] = []
    now = [interval]

    async def on_text(text: str) -> None:
        got.append(text)

    async def decode() -> None:
        for i, step in enumerate(steps):
            await anyio.wait_all_tasks_blocked()
            if i == interval_passes_at:
                now[0] = 0.0
            deliver([(seq, text, result) for text, result in step])

    outcome: Any
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(decode)
            try:
                outcome = await seq.follow(on_text, lambda: now[0])
            except Cancelled as exc:
                outcome = exc
    return got, outcome


async def test_without_pacing_each_step_is_a_piece_and_a_steps_text_one_piece() -> None:
    steps: list[Step] = [[("a", None)], [("b", None), ("c", None)], [("d", None)], [("e", DONE)]]
    got, outcome = await follow_while(sequence(), 0.0, steps)
    assert got == ["a", "bc", "d", "e"]
    assert outcome == DONE


async def test_paced_the_first_piece_goes_at_once_and_the_rest_waits_for_the_interval_or_the_end() -> None:
    steps: list[Step] = [[("a", None)], [("b", None)], [("c", None)], [("d", None)], [("e", DONE)]]
    got, outcome = await follow_while(sequence(), 3600.0, steps)
    assert got == ["a", "bcde"], "the first piece at once, the rest with the result"
    assert "".join(got) == DONE.text and outcome == DONE


async def test_held_text_goes_with_the_first_step_after_the_interval_has_passed() -> None:
    steps: list[Step] = [[("a", None)], [("b", None)], [("c", None)], [("d", None)], [("e", DONE)]]
    got, outcome = await follow_while(sequence(), 3600.0, steps, interval_passes_at=3)
    assert got == ["a", "bcd", "e"]
    assert outcome == DONE


async def test_text_held_back_is_given_before_a_failure_is_raised() -> None:
    steps: list[Step] = [[("a", None)], [("b", None)], [("", Cancelled("the generation was cancelled."))]]
    got, outcome = await follow_while(sequence(), 3600.0, steps)
    assert got == ["a", "b"]
    assert isinstance(outcome, Cancelled)


async def test_the_interval_is_none_for_a_request_alone_and_grows_with_the_requests() -> None:
    batcher = Batcher("unused.gguf", 2048, lanes=16, threads=1, pieces_per_s=60.0)
    intervals = []
    for n in (1, 2, 16):
        batcher._active = [sequence() for _ in range(n)]
        intervals.append(batcher.piece_interval())
    assert intervals == [0.0, 1 / 60, 15 / 60], "about 60 pieces a second in all, whatever the requests"
    batcher.pieces_per_s = 0.0
    assert batcher.piece_interval() == 0.0, "0: every token a piece"


async def test_a_step_whose_text_is_not_due_leaves_the_caller_asleep() -> None:
    """Each step's text crosses to the event loop, but a caller whose next piece is not due
    is not woken for it (with many requests, most steps are not a piece of most of them)."""
    seq = sequence()
    seq.interval = lambda: 3600.0
    deliver([(seq, "a", None)])
    assert seq.wake.is_set(), "the first piece is due at once"
    seq.sent_at, seq.wake = time.monotonic(), anyio.Event()
    deliver([(seq, "b", None)])
    assert not seq.wake.is_set() and seq.pieces == ["a", "b"]
    deliver([(seq, "c", DONE)])
    assert seq.wake.is_set(), "the result is always due"


async def test_a_short_prompt_is_tokenized_on_the_event_loop_and_a_long_one_on_a_worker_thread() -> None:
    """The hop to a worker thread and back costs more than tokenizing a short prompt; a long
    one would hold the event loop up."""
    import threading

    from skills.inference.engines.llama import INLINE_PROMPT_CHARS, LlamaEngine

    class Prompt:
        def __init__(self) -> None:
            self.threads: list[threading.Thread] = []

        def tokens(self, messages: list[Message]) -> list[int]:
            self.threads.append(threading.current_thread())
            return [len(m.content) for m in messages]

    prompt: Any = Prompt()
    short = [Message(role="user", content="x" * INLINE_PROMPT_CHARS)]
    long = [Message(role="system", content="x" * INLINE_PROMPT_CHARS), Message(role="user", content="y")]
    assert await LlamaEngine._prompt_tokens(prompt, short) == [INLINE_PROMPT_CHARS]
    assert await LlamaEngine._prompt_tokens(prompt, long) == [INLINE_PROMPT_CHARS, 1]
    assert prompt.threads[0] is threading.current_thread()
    assert prompt.threads[1] is not threading.current_thread()
