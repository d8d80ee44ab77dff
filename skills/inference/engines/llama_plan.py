"""Which prompt tokens one step of the batch engine decodes.

Every generating request decodes its one token each step. What the batch has room for
then goes to the prompts of requests that joined, shortest left to compute first: a
request whose prompt is nearly all cached (a follow-up turn, a retry) gets its first
token after a short step instead of after everyone else's prompts. A prompt that would
more than double the step's work waits for the next one while shorter prompts finish
in this one, since every request in the step waits for the whole step; and a prompt put
off once goes first in the next step, so a stream of short requests cannot starve a
long one.

On the default model and two cores a pass costs about 7 ms on top of about 5 ms a
token, so putting off a long prompt costs it one short step, while keeping it in would
cost each request in the step the long prompt's whole compute.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a decode pass costs beyond its tokens, as a number of tokens.
PASS_COST = 2


@dataclass
class Waiting:
    """A prompt still to compute: the tokens it has left, and whether the last step put it off."""

    left: int
    put_off: bool = False


def plan_prompts(generating: int, prompts: list[Waiting], n_batch: int) -> list[int]:
    """How many tokens of each prompt (in the order given, the order they joined) the next
    step decodes, beside ``generating`` requests' one token each, within ``n_batch``
    tokens; 0 for a prompt left for a later step."""
    order = sorted(range(len(prompts)), key=lambda i: (not prompts[i].put_off, prompts[i].left))
    counts = [0] * len(prompts)
    budget, tokens, taken = n_batch - generating, generating, False
    for i in order:
        prompt = prompts[i]
        if budget <= 0:
            break
        if taken and not prompt.put_off and prompt.left > tokens + PASS_COST:
            break  # this and every longer one: shorter prompts finish first
        counts[i] = min(prompt.left, budget)
        budget -= counts[i]
        tokens += counts[i]
        taken = True
    return counts
