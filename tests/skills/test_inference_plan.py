"""The fast tier of the batch engine's step plan: which prompt tokens a step decodes
(tests/skills/test_inference_steps.py runs the plan on the real model)."""

from __future__ import annotations

from skills.inference.engines.llama_plan import (
    PASS_COST,
    PROMPT_CHUNK,
    PUT_OFF_RATIO,
    Waiting,
    plan_prompts,
    put_off_after,
)


def test_a_nearly_cached_prompt_is_not_held_behind_a_long_one() -> None:
    # A long prompt joined first, then a retry of a prompt cached but for its last token.
    assert plan_prompts(1, [Waiting(300), Waiting(1)], 512) == [0, 1]


def test_prompts_of_similar_length_go_in_one_step() -> None:
    assert plan_prompts(1, [Waiting(12), Waiting(8), Waiting(9), Waiting(30)], 512) == [12, 8, 9, 30]
    # A prompt at the ratio (with a pass's cost) still goes in the step; one token more waits.
    at = PUT_OFF_RATIO * (5 + PASS_COST)
    assert plan_prompts(0, [Waiting(5), Waiting(at)], 512) == [5, at]
    assert plan_prompts(0, [Waiting(5), Waiting(at + 1)], 512) == [5, 0]


def test_generating_requests_count_in_the_step_a_long_prompt_is_measured_against() -> None:
    assert plan_prompts(16, [Waiting(200), Waiting(10)], 512) == [0, 10]
    assert plan_prompts(40, [Waiting(100), Waiting(10)], 512) == [100, 10]


def test_the_first_prompt_always_goes_within_the_batch() -> None:
    assert plan_prompts(0, [Waiting(400)], 512) == [400]
    assert plan_prompts(0, [Waiting(2000)], 512) == [512]
    assert plan_prompts(0, [Waiting(300), Waiting(300)], 512) == [300, 212]
    assert plan_prompts(512, [Waiting(3)], 512) == [0], "a full batch of generating requests"
    assert plan_prompts(3, [], 512) == []


def test_while_others_generate_a_long_prompt_goes_a_chunk_a_step() -> None:
    # Every generating request's next token comes after a step of at most a chunk of it,
    # not after a whole batch of its tokens.
    assert plan_prompts(16, [Waiting(2000)], 512) == [PROMPT_CHUNK]
    assert plan_prompts(1, [Waiting(PROMPT_CHUNK + 1)], 512) == [PROMPT_CHUNK]
    assert plan_prompts(16, [Waiting(PROMPT_CHUNK)], 512) == [PROMPT_CHUNK]
    # The chunk is each prompt's: a burst of short prompts still goes in one step.
    burst = [Waiting(9 + i % 4) for i in range(15)]
    assert plan_prompts(1, burst, 512) == [9 + i % 4 for i in range(15)]
    assert plan_prompts(500, [Waiting(2000)], 512) == [12], "and within the batch"


def test_while_others_generate_long_prompts_go_one_after_another() -> None:
    # One prompt at a time is computed in part, the oldest first; a short one that
    # finishes still goes beside it.
    assert plan_prompts(1, [Waiting(300, put_off=True), Waiting(300, put_off=True)], 512) == [PROMPT_CHUNK, 0]
    assert plan_prompts(1, [Waiting(300, put_off=True), Waiting(2000), Waiting(9)], 512) == [PROMPT_CHUNK, 0, 9]
    # Eight 2000-token prompts joined together beside two generating requests, stepped as the
    # engine does (``put_off_after``): a step computes one of them in part (and the end of
    # the one before), and they finish in the order they joined.
    waiting = [Waiting(2000) for _ in range(8)]
    finished: list[int] = []
    steps = 0
    while len(finished) < 8:
        counts = plan_prompts(2, waiting, 512)
        assert 0 < sum(counts) <= 2 * PROMPT_CHUNK
        assert sum(1 for prompt, n in zip(waiting, counts, strict=True) if 0 < n < prompt.left) <= 1
        for i, (prompt, n) in enumerate(zip(waiting, counts, strict=True)):
            if prompt.left and n == prompt.left:
                finished.append(i)
            prompt.put_off = prompt.left > 0 and put_off_after(2, prompt.left, n)
            prompt.left -= n
        steps += 1
    assert finished == list(range(8))
    assert steps <= -(-8 * 2000 // PROMPT_CHUNK)


def test_a_long_prompt_put_off_by_the_ratio_is_measured_by_its_chunk() -> None:
    # Beside 40 tokens of step, a 2000-token prompt adds only its chunk: it goes now.
    assert plan_prompts(30, [Waiting(10), Waiting(2000)], 512) == [10, PROMPT_CHUNK]


def test_a_prompt_put_off_goes_first_next_step_and_is_not_put_off_again() -> None:
    assert plan_prompts(0, [Waiting(5), Waiting(300, put_off=True)], 512) == [5, 300]
    assert plan_prompts(0, [Waiting(5), Waiting(600, put_off=True)], 512) == [0, 512]


def test_a_stream_of_short_prompts_cannot_starve_a_long_one() -> None:
    long = Waiting(2000)
    steps = 0
    while long.left:
        # A new short prompt joins before every step; the long one is marked as the engine does.
        counts = plan_prompts(2, [long, Waiting(4)], 512)
        long.put_off = put_off_after(2, long.left, counts[0])
        long.left -= counts[0]
        steps += 1
        assert steps < 100
    assert steps <= 2 * -(-2000 // PROMPT_CHUNK), "the long prompt decodes at least every other step"


def test_prompts_put_off_go_oldest_first() -> None:
    assert plan_prompts(0, [Waiting(600, put_off=True), Waiting(100, put_off=True)], 512) == [512, 0]


def test_a_long_prompt_is_not_starved_by_a_full_house_of_long_prompts() -> None:
    """Sixteen lanes, every one that ends taken at once by a new 300-600 token prompt: the
    2000-token prompt that joined first still finishes."""
    lengths = iter([300 + (i * 137) % 301 for i in range(10_000)])
    long = Waiting(2000)
    waiting = [long] + [Waiting(next(lengths)) for _ in range(15)]
    steps = 0
    while long.left:
        counts = plan_prompts(0, waiting, 512)
        for prompt, n in zip(waiting, counts, strict=True):
            prompt.put_off = put_off_after(0, prompt.left, n)
            prompt.left -= n
        # Those done leave (one token, then the end) and new prompts join behind the rest.
        waiting = [w for w in waiting if w.left] + [Waiting(next(lengths)) for w in waiting if not w.left]
        steps += 1
        assert steps < 100
    assert steps <= 2 * -(-2000 // 512), "it decoded at least every other step"
