"""Which prompt tokens one step of the batch engine decodes.

Every generating request decodes its one token each step. What the batch has room for
then goes to the prompts of requests that joined, shortest left to compute first: a
request whose prompt is nearly all cached (a follow-up turn, a retry) gets its first
token after a short step instead of after everyone else's prompts. A prompt over
PUT_OFF_RATIO times the step so far (with a pass's cost) waits for the next step while
the shorter ones finish in this one, since every request in the step waits for the
whole step: waiting costs the long prompt a step under a quarter of its own compute,
and keeping it in would make everyone else's step over five times as long. Prompts of
about the same length (a burst of similar requests) go in one step. A prompt put off
(by that rule, or as the batch was full) goes first in the next step, the oldest first,
so a stream of other requests cannot starve a long one: it decodes at least every other
step once those that joined before it are done.

While other requests generate, one step takes at most PROMPT_CHUNK tokens of any one
prompt, and computes at most one prompt in part: a long prompt (an agent's whole
context) is computed over several steps, each also decoding everyone's next token,
instead of holding every stream still for a whole batch of its tokens (512 tokens:
about 2.5 s on two cores). A prompt computed in part counts as put off (``put_off_after``),
so long prompts that join together are computed one after another, the oldest
first, not in turns that would make them all late; short prompts that finish in the
step still go beside it. With nothing generating there is nobody to hold up, and a
prompt takes what the batch has room for.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a decode pass costs beyond its tokens, as a number of tokens (about 7 ms against
# about 5 ms a token: the default model on two cores).
PASS_COST = 2
# A prompt waits for the next step when it is over this many times the step so far,
# counting a pass's cost.
PUT_OFF_RATIO = 4
# The most tokens of one prompt a step decodes while other requests generate: their
# tokens come at most about 0.6 s apart (default model, two cores), and a 2000-token
# prompt takes about a tenth longer than in 512-token steps.
PROMPT_CHUNK = 128


@dataclass
class Waiting:
    """A prompt still to compute: the tokens it has left, and whether the last step put it off."""

    left: int
    put_off: bool = False


def plan_prompts(generating: int, prompts: list[Waiting], n_batch: int) -> list[int]:
    """How many tokens of each prompt (in the order given, the order they joined) the next
    step decodes, beside ``generating`` requests' one token each, within ``n_batch``
    tokens (and PROMPT_CHUNK of one prompt, computed in part, while any generate); 0 for a
    prompt left for a later step."""
    # Prompts put off go first, the oldest first (the order they joined), then the rest,
    # shortest first.
    order = sorted(
        range(len(prompts)), key=lambda i: (not prompts[i].put_off, 0 if prompts[i].put_off else prompts[i].left)
    )
    counts = [0] * len(prompts)
    budget, tokens, taken, cut = n_batch - generating, generating, False, False
    chunk = PROMPT_CHUNK if generating else n_batch
    for i in order:
        prompt = prompts[i]
        if budget <= 0:
            break
        size = min(prompt.left, chunk)  # what it would add to this step
        if taken and not prompt.put_off and size > PUT_OFF_RATIO * (tokens + PASS_COST):
            break  # this and every longer one: shorter prompts finish first
        n = min(size, budget)
        if n < prompt.left:
            if generating and cut:
                continue  # one prompt at a time is computed in part while others generate
            cut = True
        counts[i] = n
        budget -= n
        tokens += n
        taken = True
    return counts


def put_off_after(generating: int, left: int, taken: int) -> bool:
    """Whether a prompt with ``left`` tokens, of which the step took ``taken`` beside
    ``generating`` requests, goes first next step: left for later, or computed in part
    while others generate (so it keeps its place until it is done)."""
    return taken == 0 or (generating > 0 and taken < left)
