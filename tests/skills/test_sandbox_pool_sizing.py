"""The warm pool shared out by use (fast tier: the arithmetic alone)."""

from __future__ import annotations

from sandbox.driver import Limits
from skills.sandbox.pool import PRIOR, Shape, share_out

PYTHON = Shape("python", "img")
DEV = Shape("dev", "img")
DATA = Shape("python-data", "img", Limits(memory_mib=1024))
SHAPES = [PYTHON, DEV, DATA]


def test_the_defaults_share_the_pool_until_anything_is_used() -> None:
    assert share_out(8, 4096, SHAPES, {PYTHON: PRIOR, DEV: PRIOR}) == {PYTHON: 4, DEV: 4, DATA: 0}
    assert share_out(2, 4096, SHAPES, {PYTHON: PRIOR, DEV: PRIOR}) == {PYTHON: 1, DEV: 1, DATA: 0}


def test_a_template_in_use_gets_most_of_the_pool_within_the_memory_budget() -> None:
    targets = share_out(8, 4096, SHAPES, {PYTHON: PRIOR + 2, DEV: PRIOR, DATA: 10})
    assert targets[DATA] > targets[PYTHON] > targets[DEV]
    assert sum(t * s.limits.memory_mib for s, t in targets.items()) <= 4096 and sum(targets.values()) <= 8


def test_no_budget_no_pool() -> None:
    assert share_out(8, 0, SHAPES, {PYTHON: 1.0}) == {PYTHON: 0, DEV: 0, DATA: 0}
