"""The lanes of a batched llama.cpp context, and which cached prefix a prompt starts from.

Each lane is one KV-cache sequence, in a stream of its own (``kv_unified`` off), and
remembers the tokens its cells hold. A request takes a free lane (``lane_score``): the
lowest one, unless another holds clearly more of its prompt. Requests that join the
engine together then share out their lanes by what each lane holds of each prompt
(``match_lanes``): a burst after an idle spell finds, within the same run of lanes, the
lanes its requests' last turns left. Its prompt then starts from
the longest prefix any lane holds (``prefix_source``): its own lane's, or another's,
free or still generating, copied whole into its lane. Agents that share a long system
prompt compute it once, not once per lane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A lane holding at most this many more prompt tokens than the lowest free lane is not
# worth breaking the run of consecutive lanes for (llama.cpp computes the lanes of one step
# in a single pass only while their ids are consecutive: ``split_equal``).
REUSE_WORTH = 32
# Another lane's prefix must save at least this many prompt tokens to be copied. A copy
# moves the cells the source lane uses (``Batcher._copy_cells``: about 2 ms for a few hundred
# tokens, default model on 2 cores, against 4-5 ms a prompt token computed), and replaces
# what the lane held.
COPY_WORTH = 8


@dataclass
class Lane:
    seq_id: int
    # The tokens this lane's KV-cache sequence holds, as of its last step.
    tokens: list[int] = field(default_factory=list)


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of their common start, by bisection on slices compared in C: every lane
    is scored for every request, and prompts run to thousands of tokens."""
    same, differ = 0, min(len(a), len(b)) + 1  # a[:same] == b[:same]; a[:differ] != b[:differ]
    while differ - same > 1:
        mid = (same + differ) // 2
        if a[:mid] == b[:mid]:
            same = mid
        else:
            differ = mid
    return same


def reusable(tokens: list[int], prompt: list[int]) -> int:
    """How many of the prompt's tokens a lane holding ``tokens`` saves computing: their
    common prefix, never the prompt's last token (its logits give the first token)."""
    return min(common_prefix(tokens, prompt), max(len(prompt) - 1, 0))


def lane_score(lane: Lane, prompt: list[int], lanes: int) -> int:
    """How much a free lane is worth to a prompt: its reusable prefix (in steps of
    REUSE_WORTH), then the lower id."""
    return (reusable(lane.tokens, prompt) // REUSE_WORTH) * lanes + (lanes - 1 - lane.seq_id)


def prefix_source(lane: Lane, lanes: list[Lane], prompt: list[int]) -> tuple[Lane, int]:
    """The lane whose cache ``lane`` should start ``prompt`` from, and how many tokens of
    it that saves: ``lane`` itself unless another holds at least COPY_WORTH more."""
    own = reusable(lane.tokens, prompt)
    others = [(reusable(other.tokens, prompt), other) for other in lanes if other is not lane]
    offered, source = max(others, key=lambda pair: pair[0], default=(0, lane))
    return (source, offered) if offered >= own + COPY_WORTH else (lane, own)


def match_lanes(prompts: list[list[int]], lanes: list[Lane]) -> list[int]:
    """For requests that joined together, request i on ``lanes[i]``: which of those lanes
    each should decode on, longest reusable prefixes first, a request keeping its own lane
    among equals. The set of lanes stays the same, and so does the run of busy lanes."""
    # (prefix it saves, whether it is the request's own lane, request, lane): most saved
    # first, then its own lane, then the lower indexes.
    pairs = sorted(
        (
            (reusable(lane.tokens, prompt), i == j, i, j)
            for i, prompt in enumerate(prompts)
            for j, lane in enumerate(lanes)
        ),
        key=lambda pair: (-pair[0], not pair[1], pair[2], pair[3]),
    )
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for _, _, request, lane in pairs:
        if request not in chosen and lane not in used:
            chosen[request] = lane
            used.add(lane)
    return [chosen[i] for i in range(len(prompts))]


def share_lanes(lanes: list[Lane], prompts: list[list[int]]) -> None:
    """Requests that joined together, request i on ``lanes[i]``, trade lanes as
    ``match_lanes`` says. The lanes swap their contents (stream and tokens), not their
    holders: the Lane a request's caller holds, and gives back when it ends, stays the one
    it decodes on."""
    if len(lanes) < 2:
        return
    held = [(lane.seq_id, lane.tokens) for lane in lanes]
    for lane, taken in zip(lanes, match_lanes(prompts, lanes), strict=True):
        lane.seq_id, lane.tokens = held[taken]
