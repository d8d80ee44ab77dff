"""A lane started from another lane's cache holds exactly what that lane held: on the real
model, the next token's logits are the same bits as when the prompt is taken up again on
the lane that computed it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from skills.inference.engines.base import GenerateRequest, Message
from skills.inference.engines.llama import default_model_path
from skills.inference.engines.llama_batch import Batcher, Sequence

pytestmark = [pytest.mark.anyio, pytest.mark.model]

SYSTEM = "You are a poet who answers every question with a short rhyme about the weather. " * 8


def last_logits(batcher: Batcher) -> Any:
    import llama_cpp

    size = llama_cpp.llama_vocab_n_tokens(batcher.vocab)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(batcher.ctx, -1), shape=(size,)).copy()


async def test_a_copied_prefix_gives_the_same_logits_as_the_lane_it_came_from() -> None:
    batcher = Batcher(str(default_model_path()), 2048, 4, 2)
    # Driven step by step on this thread, as the batch thread would.
    batcher._load()
    try:
        assert batcher.prompt is not None
        request = GenerateRequest(
            messages=[Message(role="system", content=SYSTEM), Message(role="user", content="How is the day?")],
            max_tokens=1,
            temperature=0,
        )
        prompt = batcher.prompt.tokens(request.messages)
        first, copied, own = batcher.lane_list[0], batcher.lane_list[1], batcher.lane_list[0]

        def decode_once(lane_taken: Any) -> Sequence:
            seq = Sequence(lane_taken, prompt, request)
            batcher._admit(seq)
            batcher._step()
            assert seq not in batcher._active, "one token, then done"
            return seq

        decode_once(first)
        assert batcher.copies == 0 and first.tokens == prompt
        on_copy = decode_once(copied)
        copied_logits = last_logits(batcher)
        assert batcher.copies == 1 and on_copy.cached == len(prompt) - 1
        on_own = decode_once(own)
        own_logits = last_logits(batcher)
        assert batcher.copies == 1, "its own lane held the prompt: nothing to copy"
        assert on_own.cached == len(prompt) - 1
        # The same last token on the same cached keys and values, in a batch of the same shape.
        assert np.array_equal(copied_logits, own_logits)
    finally:
        batcher._free()
