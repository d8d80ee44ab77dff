"""What the memory skill needs of the store's indexes: a vector index and a full-text index
over the memories' rows, inside the store's own transactions.

Two engines, one per kind of store: ``sqlite.py`` (sqlite-vec and FTS5) and
``postgres.py`` (pgvector's HNSW and tsvector). Both take the same SQLAlchemy
conditions on ``Memory`` as a filter, and both answer with memories' ``seq``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

Vector = np.ndarray[Any, np.dtype[np.float32]]
# Words too common to say what a memory is about; a keyword query leaves them out.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
MOST_WORDS = 32
# A word found in this many memories of a namespace or more tells them apart no better than a
# stopword: a keyword search leaves it out, so what it costs stays bounded however common it is.
COMMON_WORD = 1000
# How long a word's being common in a namespace is taken as known: it changes slowly, and it only
# steers ranking, so a search need not count again what a search a moment ago counted.
COMMON_FOR_S = 60.0
COMMON_KEPT = 50_000


@dataclass(frozen=True)
class Entry:
    """A memory as its indexes see it (``vector`` is None when one is being removed)."""

    seq: int
    namespace_id: str
    text: str
    vector: Vector | None = None


def query_words(query: str) -> list[str]:
    """The words a keyword search looks for: lowercase, no stopwords, each once."""
    found = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 1 and w not in STOPWORDS]
    return list(dict.fromkeys(found))[:MOST_WORDS]


class CommonWords:
    """Which words are in ``COMMON_WORD`` memories of a namespace or more, counted by
    ``count`` (capped at ``COMMON_WORD``) and remembered for ``COMMON_FOR_S``."""

    def __init__(self, count: Callable[[Session, str, str], int]) -> None:
        self.count = count
        self.known: dict[tuple[str, str], tuple[bool, float]] = {}

    def common(self, session: Session, namespace_id: str, word: str) -> bool:
        now = time.monotonic()
        found = self.known.get((namespace_id, word))
        if found is not None and now - found[1] < COMMON_FOR_S:
            return found[0]
        if len(self.known) >= COMMON_KEPT:
            self.known.clear()
        common = self.count(session, namespace_id, word) >= COMMON_WORD
        self.known[(namespace_id, word)] = (common, now)
        return common


class MemoryIndex(Protocol):
    def add(self, session: Session, entries: Sequence[Entry]) -> None:
        """Index new memories (their rows are already in ``session``)."""
        ...

    def remove(self, session: Session, entries: Sequence[Entry]) -> None:
        """Forget memories' index entries (before their rows are deleted)."""
        ...

    def nearest(
        self, session: Session, namespace_id: str, vector: Vector, k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[tuple[int, float | None]]:
        """The ``k`` memories closest in meaning, best first, with their cosine similarity (None
        where the index ranked by an approximation: ``similarity`` then tells it exactly)."""
        ...

    def matching(
        self, session: Session, namespace_id: str, words: list[str], k: int, where: Sequence[ColumnElement[bool]]
    ) -> list[int]:
        """The ``k`` memories that best match any of ``words`` (but those in ``COMMON_WORD``
        memories or more), best first."""
        ...

    def similarity(self, session: Session, seqs: Sequence[int], vector: Vector) -> dict[int, float]:
        """The cosine similarity of each of these memories to ``vector``."""
        ...

    def dropped(self, namespace_id: str) -> None:
        """A namespace is deleted: let go of what is kept of it outside the store."""
        ...
