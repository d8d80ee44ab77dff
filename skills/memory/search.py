"""Hybrid search: meaning (the vector index) and words (the full-text index), fused.

Each index ranks its own candidates; reciprocal rank fusion (Cormack et al., 2009)
sums ``weight / (RRF_K + rank)`` over the lists a memory is in, so a memory
near the top of both wins, and one found by either still counts. It needs no
calibration between a cosine similarity and a BM25 score, which live on
different scales. Meaning weighs more: paraphrases share few words, while a
name, an id or a rare word is exactly what the full-text side finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_

from skills.memory.rows import Memory

RRF_K = 60
MEANING_WEIGHT = 1.0
WORDS_WEIGHT = 0.5
# Candidates each index gives per hit asked for (some may have expired, or fall under min_score).
CANDIDATES_PER_HIT = 3
MIN_CANDIDATES = 20


@dataclass(frozen=True)
class Ranked:
    seq: int
    fused: float
    by_meaning: bool
    by_words: bool


@dataclass(frozen=True)
class Found:
    """A hit: the memory, its namespace's name, its similarity of meaning, and its rank."""

    memory: Memory
    namespace: str
    score: float
    ranked: Ranked


def alive(now: datetime) -> ColumnElement[bool]:
    return or_(Memory.expires_at.is_(None), Memory.expires_at > now)


def candidates(top_k: int) -> int:
    return max(top_k * CANDIDATES_PER_HIT, MIN_CANDIDATES)


def fuse(meaning: list[int], words: list[int]) -> list[Ranked]:
    """Both rankings (best first) as one, best first."""
    scores: dict[int, float] = {}
    for weight, ranking in ((MEANING_WEIGHT, meaning), (WORDS_WEIGHT, words)):
        for rank, seq in enumerate(ranking, start=1):
            scores[seq] = scores.get(seq, 0.0) + weight / (RRF_K + rank)
    in_meaning, in_words = set(meaning), set(words)
    ranked = [Ranked(seq, score, seq in in_meaning, seq in in_words) for seq, score in scores.items()]
    return sorted(ranked, key=lambda r: (-r.fused, r.seq))


def metadata_filter(wanted: Mapping[str, str | int | float | bool | None]) -> list[ColumnElement[bool]]:
    """SQL conditions for metadata equalities (a None value: the key is absent or null)."""
    conditions: list[ColumnElement[bool]] = []
    for key, value in wanted.items():
        field = Memory.meta[key]
        if value is None:
            conditions.append(field.as_string().is_(None))
        elif isinstance(value, bool):
            conditions.append(field.as_boolean() == value)
        elif isinstance(value, int):
            conditions.append(field.as_integer() == value)
        elif isinstance(value, float):
            conditions.append(field.as_float() == value)
        else:
            conditions.append(field.as_string() == value)
    return conditions
