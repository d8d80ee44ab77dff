"""How a batched request's text streams to its caller: the engine's pieces paced by how
many requests share it (no model: the decoding thread's side is played by ``deliver``);
and where its prompt is tokenized on the way in."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from common.errors import Cancelled
from skills.inference.engines.base import Completion, GenerateRequest, Message
from skills.inference.engines.llama_batch import Batcher, Sequence, deliver
from skills.inference.engines.llama_lanes import Lane

pytestmark = pytest.mark.anyio

Step = list[tuple[str, Any]]  # what the thread hands over for a sequence at once: its text, and its result or None
DONE = Completion(text="abcde", finish_reason="stop", prompt_tokens=3, cached_tokens=0, completion_tokens=5)


def sequence() -> Sequence:
    request = GenerateRequest(messages=[Message(role="user", content="hi")], max_tokens=8, temperature=0)
    return Sequence(Lane(0), [1, 2, 3], request)


async def follow_while(seq: Sequence, steps: list[Step], busy_at: int | None = None) -> tuple[list[str], Any]:
    """Follow ``seq`` while each hand-over (and at last its result) is delivered, one each
    time the caller waits for the next; from its piece number ``busy_at`` on, the caller
    stays busy sending it until the last hand-over. The pieces the caller got, and its
    outcome."""
    got: list[str] = []
    busy = anyio.Event()

    async def on_text(text: str) -> None:
        got.append(text)
        if len(got) == busy_at:
            await busy.wait()

    async def decode() -> None:
        for step in steps:
            await anyio.wait_all_tasks_blocked()
            deliver([(seq, text, result) for text, result in step])
        busy.set()

    outcome: Any
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(decode)
            try:
                outcome = await seq.follow(on_text)
            except Cancelled as exc:
                outcome = exc
    return got, outcome


async def test_each_hand_over_is_a_piece_and_what_came_while_the_caller_was_busy_one_piece() -> None:
    steps: list[Step] = [[("a", None)], [("b", None), ("c", None)], [("d", None)], [("e", DONE)]]
    got, outcome = await follow_while(sequence(), steps)
    assert got == ["a", "bc", "d", "e"]
    assert outcome == DONE
    got, outcome = await follow_while(sequence(), steps, busy_at=2)
    assert got == ["a", "bc", "de"], "d came while the caller was still sending bc"
    assert outcome == DONE


async def test_text_handed_over_is_given_before_a_failure_is_raised() -> None:
    steps: list[Step] = [[("a", None)], [("b", None), ("", Cancelled("the generation was cancelled."))]]
    got, outcome = await follow_while(sequence(), steps)
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


async def test_the_thread_hands_text_over_at_the_interval_all_requests_in_one_wake_first_text_and_ends_at_once() -> (
    None
):
    """Between two hand-overs the text waits on the thread's side and the event loop sleeps:
    a wake costs the decode a core and the GIL, so one carries every request's text. The
    wake comes from the hand-over thread, never from the decoding one."""
    batcher = Batcher("unused.gguf", 2048, lanes=16, threads=1, pieces_per_s=1 / 3600)
    a, b = sequence(), sequence()
    batcher._active = [a, b]
    wakes: list[int] = []
    wakers: set[str] = set()
    loop: Any = asyncio.get_running_loop()
    real = loop.call_soon_threadsafe

    def counted(callback: Any, items: list[Any]) -> Any:
        wakers.add(threading.current_thread().name)
        wakes.append(len(items))
        return real(callback, items)

    loop.call_soon_threadsafe = counted

    async def step(*items: tuple[Sequence, str, Any]) -> None:
        batcher._outbox.extend(items)
        batcher._flush()
        assert batcher._handover.wait(10), "the hand-over thread is stuck"
        await anyio.wait_all_tasks_blocked()

    try:
        await step((a, "a1", None), (b, "b1", None))
        assert wakes == [2] and a.pieces == ["a1"] and b.pieces == ["b1"], "first text at once"
        await step((a, "a2", None), (b, "b2", None))
        await step((a, "a3", None))
        assert wakes == [2] and a.pieces == ["a1"], "held within the interval (an hour)"
        batcher.handed_at -= 3600
        await step((b, "b3", None))
        assert wakes == [2, 4] and a.pieces == ["a1", "a2", "a3"] and b.pieces == ["b1", "b2", "b3"]
        await step((a, "a4", None))
        await step((b, "", DONE))
        assert wakes == [2, 4, 2] and b.result == DONE and a.pieces[-1] == "a4", "an end goes at once, with what waits"
        c = sequence()
        batcher._active.append(c)
        await step((c, "c1", None))
        assert wakes == [2, 4, 2, 1] and c.pieces == ["c1"], "a newcomer's first text goes at once"
        assert wakers == {"llama-handover"}
    finally:
        loop.call_soon_threadsafe = real
        batcher._handover.close()


async def test_a_short_prompt_is_tokenized_on_the_event_loop_and_a_long_one_on_a_worker_thread() -> None:
    """The hop to a worker thread and back costs more than tokenizing a short prompt; a long
    one would hold the event loop up."""
    import threading

    from skills.inference.engines.llama import INLINE_PROMPT_CHARS, LlamaEngine

    class Prompt:
        def __init__(self) -> None:
            self.threads: list[threading.Thread] = []

        def tokens(self, messages: list[Message], fewer_than: int | None = None) -> list[int]:
            self.threads.append(threading.current_thread())
            return [len(m.content) for m in messages]

    prompt: Any = Prompt()
    short = [Message(role="user", content="x" * INLINE_PROMPT_CHARS)]
    long = [Message(role="system", content="x" * INLINE_PROMPT_CHARS), Message(role="user", content="y")]
    assert await LlamaEngine._prompt_tokens(prompt, short) == [INLINE_PROMPT_CHARS]
    assert await LlamaEngine._prompt_tokens(prompt, long) == [INLINE_PROMPT_CHARS, 1]
    assert prompt.threads[0] is threading.current_thread()
    assert prompt.threads[1] is not threading.current_thread()
