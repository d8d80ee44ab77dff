"""Hybrid ranking and keyword queries, without the model (fast tier)."""

from __future__ import annotations

from skills.memory.engines.base import query_words
from skills.memory.search import candidates, fuse


def test_a_memory_both_sides_found_comes_first_and_meaning_outweighs_words() -> None:
    ranked = fuse(meaning=[1, 2, 3], words=[3, 4])
    assert [r.seq for r in ranked] == [3, 1, 2, 4]
    assert (ranked[0].by_meaning, ranked[0].by_words) == (True, True)
    assert (ranked[-1].by_meaning, ranked[-1].by_words) == (False, True)
    assert fuse([], []) == []


def test_keyword_queries_keep_the_words_that_say_something() -> None:
    assert query_words("What is the DEPLOY day, and the deploy window?") == ["deploy", "day", "window"]
    assert query_words('"; DROP TABLE memories; --') == ["drop", "table", "memories"]
    assert candidates(5) == 20 and candidates(50) == 150
