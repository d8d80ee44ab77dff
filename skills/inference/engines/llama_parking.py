"""Taking a lane back from a request while it generates, and going on later on another.

When a tenant waits for a lane while another holds at least two more than it does
(``LlamaEngine._make_room``), one request of the one holding most gives its lane up:
between two steps the decoding thread saves the request's cells (llama.cpp's
per-sequence state: a few MB for a few hundred tokens, about 2 ms) and lets go of it,
and its lane goes to the tenant that waited. The request then waits for a lane again,
first among its tenant's. On the lane it gets, its cells are put back as they were and
it goes on from the token where it stopped, with its sampler's state: nothing is
computed twice, and what it did is billed once. Lanes are a model's capacity, and a
reply can run for minutes: without this, a tenant's sixteen long generations kept every
other tenant waiting for the first of them to end.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from skills.inference.engines.llama_lanes import Lane


class Parked(Exception):
    """Raised in a request's follower: the thread has let go of it, its cells saved, and its
    lane is to go to the tenant it was taken back for."""


@dataclass
class SavedCells:
    data: ctypes.Array[ctypes.c_uint8]  # the sequence's state, as llama.cpp wrote it
    size: int
    tokens: list[int]  # what its lane held


def save_cells(ctx: Any, lane: Lane) -> SavedCells | None:
    """The cells of ``lane``'s sequence, copied out; None where llama.cpp will not. (Also how
    a prompt starts from another lane's cache: ``Batcher._copy_cells``.)"""
    import llama_cpp

    size = int(llama_cpp.llama_state_seq_get_size(ctx, lane.seq_id))
    data = (ctypes.c_uint8 * max(size, 1))()
    got = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, lane.seq_id)) if size else 0
    return SavedCells(data, got, list(lane.tokens)) if got else None


def restore_cells(ctx: Any, memory: Any, saved: SavedCells, lane: Lane) -> bool:
    """Make ``lane``'s sequence hold the saved cells; False (and the lane empty) where
    llama.cpp will not take them."""
    import llama_cpp

    llama_cpp.llama_memory_seq_rm(memory, lane.seq_id, -1, -1)
    if int(llama_cpp.llama_state_seq_set_data(ctx, saved.data, saved.size, lane.seq_id)) != saved.size:
        llama_cpp.llama_memory_seq_rm(memory, lane.seq_id, -1, -1)
        lane.tokens = []
        return False
    lane.tokens = list(saved.tokens)
    return True
