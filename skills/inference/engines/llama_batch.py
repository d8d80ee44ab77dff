"""Continuous batching: one llama.cpp context decodes every request of a model together.

The context holds one KV-cache sequence per *lane* (``n_seq_max`` of them, each with
the model's whole context length, not shared: ``kv_unified`` off). A request takes
a lane, and with it the lane's cache: the tokens its last request left there, or
another lane's when that one holds more of the prompt (``llama_lanes``), so a prompt
that starts the same way is not computed again. One thread owns the context and
repeats one step while any request is active:

    requests that joined since the last step: trade lanes among themselves for those
        holding more of their prompts, start each lane's cache from the lane holding most
        of its prompt, trim it to the prompt's common prefix, queue the rest
    one batch (``llama_batch``, a seq_id per token): the next token of every request
        that is generating, then prompt tokens of new ones, those put off last step
        first, then the shortest, up to ``n_batch`` (``llama_plan``)
    llama_decode, then each request that reached its end samples its next token
    requests that finished or were cancelled leave; their lane keeps its cache
    a request whose lane is taken back for another tenant leaves with its cells saved,
        and one that got a lane again comes back with them (``llama_parking``)

Tokens go into the batch in lane order, lowest free lanes first (``llama_lanes``).

Text crosses to the event loop (``llama_handover``: queued by the decoding thread, the
loop woken by a thread of its own), never blocking the decode on the loop, once the
next step's batch is built, just before llama_decode lets go of the GIL. It is paced
by how many requests share the engine (``Batcher.piece_interval``): what the steps
produced goes over once (requests - 1) / ``pieces_per_s`` seconds have passed since
the last hand-over, so with many requests about ``pieces_per_s`` pieces go out in all
instead of a piece per token. A request's first text and its end are handed
over at once. Each hand-over wakes the event loop, which takes the GIL and a core from
the decode, and each piece costs the loop and the caller's client the same whatever it
holds (an MCP progress notification, an SSE event): one wake carries every request's
text. A request alone gets its text as it comes.

Usage is what the context did: the prompt's tokens, those kept from the lane's
cache (never the last: its logits are computed), and every token sampled.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from typing import Any

import anyio
import numpy as np

from common.errors import BackendUnavailable, Cancelled
from skills.inference.engines.base import Completion, GenerateRequest, OnText, Spent
from skills.inference.engines.llama_cpu import model_params
from skills.inference.engines.llama_handover import Handover
from skills.inference.engines.llama_lanes import Lane, prefix_source, share_lanes
from skills.inference.engines.llama_parking import Parked, SavedCells, restore_cells, save_cells
from skills.inference.engines.llama_plan import Waiting, plan_prompts, put_off_after
from skills.inference.engines.llama_text import ChatPrompt, TextOut, Vocabulary, new_sampler

log = logging.getLogger("cloudskills.inference")

# Tokens decoded in one step at most (prompt tokens of joining requests fill what the
# generating ones leave); llama.cpp splits it into passes of N_UBATCH.
N_BATCH = 512
N_UBATCH = 512


class ParkedMark:
    """What the thread hands over for a request it let go of with its cells saved."""


PARKED = ParkedMark()


class Sequence:
    """One request on one lane, shared by the event loop and the decoding thread."""

    def __init__(self, lane: Lane, prompt: list[int], request: GenerateRequest) -> None:
        self.lane = lane
        self.prompt = prompt
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.cancelled = False  # set by the event loop; read by the thread between steps
        # The thread's side.
        self.feed: list[int] = []  # tokens to decode next: the prompt's rest, then the last one sampled
        self.n_past = 0
        self.cached = 0
        self.sampled = 0
        self.put_off = False  # whether the last step left its prompt for later (llama_plan)
        self.out = TextOut(request.stop)
        self.sampler: Any = None
        self.handed = False  # whether any of its text has crossed to the loop yet
        self.saved: SavedCells | None = None  # its cells, while it waits for a lane again
        # Set by the event loop: the tenant its lane is to be taken back for (llama_parking),
        # and how many times it was.
        self.park_for: str | None = None
        self.parks = 0
        # The event loop's side, written only on the loop (see deliver).
        self.pieces: list[str] = []
        self.result: Completion | BaseException | None = None
        self.parked = False  # the thread let go of it, its cells saved
        self.wake = anyio.Event()

    async def follow(self, on_text: OnText) -> Completion:
        """Hand the text to ``on_text`` as the thread hands it over, what came while the
        caller was busy in one piece; then return the completion."""
        while True:
            self.wake = anyio.Event()
            if self.pieces:
                text, self.pieces = "".join(self.pieces), []
                await on_text(text)
                continue
            if isinstance(self.result, BaseException):
                raise self.result
            if self.result is not None:
                return self.result
            if self.parked:
                raise Parked()
            await self.wake.wait()

    async def stopped(self) -> None:
        """Wait until the thread has let go of the sequence (after ``cancelled``): it ended,
        or it was parked just before."""
        while self.result is None and not self.parked:
            self.wake = anyio.Event()
            await self.wake.wait()

    def abandon(self) -> None:
        """On the event loop, for a parked request that will not go on (its caller left while
        it waited for a lane): the thread has let go of it, so it ends here, cancelled."""
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
        self.saved = None
        self.result = Cancelled("the generation was cancelled.")

    def spent(self) -> Spent:
        """What the engine did for the request, read once the thread has let go of it: all of
        it when it finished, what it had decoded when it was cancelled, nothing when the
        engine failed (a failed attempt costs nothing)."""
        if isinstance(self.result, Completion):
            return Spent.of(self.result)
        if isinstance(self.result, Cancelled) and self.n_past > self.cached:
            return Spent(min(self.n_past, len(self.prompt)), self.cached, self.sampled)
        return Spent()


Handed = tuple[Sequence, str, Completion | BaseException | ParkedMark | None]


def deliver(items: list[Handed]) -> None:
    """On the event loop: what the thread handed over for its sequences."""
    for seq, text, result in items:
        if text:
            seq.pieces.append(text)
        if isinstance(result, ParkedMark):
            seq.parked = True
        elif result is not None:
            seq.result = result
        seq.wake.set()


class Batcher:
    """The thread that owns a model context and decodes every lane's request together."""

    def __init__(self, path: str, context_length: int, lanes: int, threads: int, pieces_per_s: float = 0.0) -> None:
        self.path = path
        self.context_length = context_length
        self.lanes = [Lane(i) for i in range(lanes)]
        self.threads = threads
        self.pieces_per_s = pieces_per_s
        self.ready: Future[None] = Future()
        self._cv = threading.Condition()
        self._joining: list[Sequence] = []
        self._resuming: list[Sequence] = []  # parked ones that got a lane again
        self._active: list[Sequence] = []
        self._outbox: list[Handed] = []
        self._handover = Handover(deliver)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self.prompt: ChatPrompt | None = None
        self.n_ctx_seq = context_length
        # What it has done: steps decoded, the most requests one step decoded together, and
        # prompts started from another lane's cache.
        self.steps = 0
        self.widest = 0
        self.copies = 0
        self.parks = 0
        self.outputs: list[tuple[Sequence, int]] = []  # the last step's: a request, its row's batch index
        self.handed_at = 0.0  # when the thread last handed text over (time.monotonic)

    def start(self) -> None:
        self._thread.start()

    def join(self, seq: Sequence) -> None:
        with self._cv:
            if self._closing or not self._thread.is_alive():
                raise BackendUnavailable("the model's engine has stopped; try again.")
            self._joining.append(seq)
            self._cv.notify()

    def resume(self, seq: Sequence) -> None:
        """Take a parked sequence back, on the lane it now holds (``seq.lane``)."""
        seq.parked = False
        with self._cv:
            if self._closing or not self._thread.is_alive():
                raise BackendUnavailable("the model's engine has stopped; try again.")
            self._resuming.append(seq)
            self._cv.notify()

    def poke(self) -> None:
        """Wake the thread: a sequence was cancelled."""
        with self._cv:
            self._cv.notify()

    def busy(self) -> int:
        return len(self._active) + len(self._joining) + len(self._resuming)

    def piece_interval(self) -> float:
        """Seconds between two hand-overs of text: none for a request alone, then in step
        with the requests, so that about ``pieces_per_s`` pieces go out in all."""
        return max(self.busy() - 1, 0) / self.pieces_per_s if self.pieces_per_s else 0.0

    def close(self) -> None:
        """Stop after the current step, fail what is left, free the context (on its own thread)."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        failure: BaseException = BackendUnavailable("the model's engine was shut down; try again.")
        try:
            while True:
                with self._cv:
                    while not (self._joining or self._resuming or self._active or self._closing):
                        self._cv.wait()
                    if self._closing:
                        break
                    joining, self._joining = self._joining, []
                    resuming, self._resuming = self._resuming, []
                self._take_in(joining)
                for seq in resuming:
                    self._resume(seq)
                for seq in [s for s in self._active if s.cancelled]:
                    self._leave(seq, Cancelled("the generation was cancelled."))
                for seq in [s for s in self._active if s.park_for is not None]:
                    self._park(seq)
                if self._active:
                    self._step()  # hands the outbox over just before it decodes
                if not self._active:
                    self._flush()
        except Exception as exc:
            log.exception("the batch decoder failed")
            failure = BackendUnavailable(f"the model's engine failed ({type(exc).__name__}); try again.")
        finally:
            with self._cv:
                self._closing = True
                left, self._joining = self._active + self._joining + self._resuming, []
                self._resuming = []
            self._active = []
            for seq in left:
                self._outbox.append((seq, "", failure))
            self._flush()
            self._handover.close()
            self._free()

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import _internals

        internals: Any = _internals  # untyped

        llama_cpp.llama_backend_init()
        # llama.cpp logs through llama-cpp-python's callback, quiet below errors; the model is
        # loaded without its fd-level silencing, which would blank the stdio server's stdout.
        quiet = logging.getLogger("llama-cpp-python")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        self.model = internals.LlamaModel(path_model=self.path, params=model_params(), verbose=True)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.context_length * len(self.lanes)
        params.n_seq_max = len(self.lanes)
        params.n_batch = max(N_BATCH, len(self.lanes))
        params.n_ubatch = N_UBATCH
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False
        params.no_perf = True
        self.context = internals.LlamaContext(model=self.model, params=params, verbose=True)
        self.ctx = self.context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.n_batch = int(params.n_batch)
        self.vocabulary = Vocabulary(self.vocab)
        self.prompt = ChatPrompt(self.model)

    def _free(self) -> None:
        import llama_cpp

        if getattr(self, "ctx", None) is None:
            return
        llama_cpp.llama_batch_free(self.batch)
        self.context.close()
        self.model.close()
        self.ctx = None

    def _take_in(self, joining: list[Sequence]) -> None:
        joined = [seq for seq in joining if not seq.cancelled]
        share_lanes([seq.lane for seq in joined], [seq.prompt for seq in joined])
        for seq in joining:
            self._admit(seq)

    def _admit(self, seq: Sequence) -> None:
        import llama_cpp

        if seq.cancelled:
            self._outbox.append((seq, "", Cancelled("the generation was cancelled.")))
            return
        lane, prompt = seq.lane, seq.prompt
        source, keep = prefix_source(lane, self.lanes, prompt)
        if source is not lane:
            self._copy_cells(source, lane)  # another lane holds more of the prompt
            self.copies += 1
        if not llama_cpp.llama_memory_seq_rm(self.memory, lane.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, lane.seq_id, -1, -1)
            keep = 0
        lane.tokens = prompt[:keep]
        seq.cached = seq.n_past = keep
        seq.feed = prompt[keep:]
        seq.sampler = new_sampler(seq.request.temperature, seq.request.seed)
        self._active.append(seq)

    def _park(self, seq: Sequence) -> None:
        """Let go of a request, its cells saved, so that its lane can serve another tenant."""
        saved = save_cells(self.ctx, seq.lane)
        if saved is None:  # llama.cpp will not copy them out: it keeps its lane
            seq.park_for = None
            return
        seq.saved = saved
        self._active.remove(seq)
        self.parks += 1
        self._outbox.append((seq, "", PARKED))

    def _resume(self, seq: Sequence) -> None:
        """A parked request goes on, its cells put back on the lane it got."""
        assert seq.saved is not None
        saved, seq.saved = seq.saved, None
        self._active.append(seq)
        if seq.cancelled:
            self._leave(seq, Cancelled("the generation was cancelled."))
        elif not restore_cells(self.ctx, self.memory, saved, seq.lane):
            self._leave(seq, BackendUnavailable("the model's engine could not take the request back; try again."))

    def _copy_cells(self, source: Lane, lane: Lane) -> None:
        """Make ``lane``'s cache a copy of ``source``'s, now: the cells ``source`` uses go
        out and into ``lane`` through llama.cpp's per-sequence state (a few MB for a few
        hundred tokens, about 2 ms). ``llama_memory_seq_cp`` would move the whole stream
        (every layer's K and V for the lane's full context: 47 MB for the default model) at
        the start of the next decode, and hold that step up by about 10 ms a copy."""
        import llama_cpp

        saved = save_cells(self.ctx, source)
        if saved is None or not restore_cells(self.ctx, self.memory, saved, lane):
            # Where the state will not go across, the stream copy still does.
            llama_cpp.llama_memory_seq_rm(self.memory, lane.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, source.seq_id, lane.seq_id, -1, -1)

    def _step(self) -> None:
        import llama_cpp

        # How many tokens each sequence decodes now: generating ones one each, then what
        # ``plan_prompts`` gives the prompts of new ones.
        take = {id(seq): 1 for seq in self._active if seq.sampled}
        prompts, generating = [seq for seq in self._active if not seq.sampled], len(take)
        counts = plan_prompts(generating, [Waiting(len(seq.feed), seq.put_off) for seq in prompts], self.n_batch)
        for seq, n in zip(prompts, counts, strict=True):
            seq.put_off = put_off_after(generating, len(seq.feed), n)
            if n:
                take[id(seq)] = n
        batch, count, outputs = self.batch, 0, []
        for seq in sorted(self._active, key=lambda s: s.lane.seq_id):
            n = take.get(id(seq), 0)
            for i in range(n):
                batch.token[count] = seq.feed[i]
                batch.pos[count] = seq.n_past + i
                batch.n_seq_id[count] = 1
                batch.seq_id[count][0] = seq.lane.seq_id
                last = i == n - 1 and n == len(seq.feed)
                batch.logits[count] = last
                if last:
                    outputs.append((seq, count))
                count += 1
        batch.n_tokens = count
        # The last step's text goes to the loop now, while the decode lets go of the GIL: the
        # loop wakes to a free GIL, and the decode never waits for it in the gap between steps.
        self._flush()
        rc = llama_cpp.llama_decode(self.ctx, batch)
        stepped = [s for s in self._active if id(s) in take]
        self.steps += 1
        self.widest = max(self.widest, len(stepped))
        if rc != 0:
            for seq in stepped:
                llama_cpp.llama_memory_seq_rm(self.memory, seq.lane.seq_id, -1, -1)
                seq.lane.tokens = []
                self._leave(seq, BackendUnavailable(f"llama.cpp could not decode the batch (code {rc}); try again."))
            return
        for seq in stepped:
            n = take[id(seq)]
            seq.lane.tokens.extend(seq.feed[:n])
            seq.n_past += n
            seq.feed = seq.feed[n:]
        self.outputs = outputs
        greedy = self.greedy(len(outputs)) if any(seq.sampler is None for seq, _ in outputs) else []
        for i, (seq, index) in enumerate(outputs):
            if seq.sampler is None:
                self._take(seq, greedy[i])
            else:
                self._take(seq, int(llama_cpp.llama_sampler_sample(seq.sampler.sampler, self.ctx, index)))

    def _take(self, seq: Sequence, token: int) -> None:
        """A request's next token: the end, or its text and the next step's input."""
        seq.sampled += 1
        if self.vocabulary.ends(token):
            self._finish(seq, "stop")
            return
        text = seq.out.add(self.vocabulary.text(token))
        if text:
            self._outbox.append((seq, text, None))
        if seq.out.stopped:
            self._finish(seq, "stop")
        elif seq.sampled >= seq.request.max_tokens or seq.n_past >= self.n_ctx_seq:
            self._finish(seq, "length")
        else:
            seq.feed = [token]

    def greedy(self, rows: int) -> list[int]:
        """The most likely next token of each of the last decode's ``rows`` outputs, in batch
        order, in one pass over llama.cpp's logits (numpy's argmax: the first of equals, as
        llama.cpp's greedy sampler)."""
        import llama_cpp

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))
        return [int(token) for token in logits.argmax(axis=1)]

    def _finish(self, seq: Sequence, reason: str) -> None:
        rest = seq.out.finish()
        completion = Completion(
            text=seq.out.text,
            finish_reason=reason,
            prompt_tokens=len(seq.prompt),
            cached_tokens=seq.cached,
            completion_tokens=seq.sampled,
        )
        self._leave(seq, completion, rest)

    def _leave(self, seq: Sequence, result: Completion | BaseException, text: str = "") -> None:
        self._active.remove(seq)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        self._outbox.append((seq, text, result))

    def _flush(self) -> None:
        """Hand the outbox to the event loop: at once when it holds a request's first text
        or an end, else once ``piece_interval()`` has passed since the last hand-over
        (until then the text waits here, and the loop sleeps)."""
        if not self._outbox:
            return
        now = time.monotonic()
        urgent = any(result is not None or not seq.handed for seq, _, result in self._outbox)
        if not urgent and now - self.handed_at < self.piece_interval():
            return
        self.handed_at = now
        by_loop: dict[asyncio.AbstractEventLoop, list[Handed]] = defaultdict(list)
        for item in self._outbox:
            item[0].handed = True
            by_loop[item[0].loop].append(item)
        self._handover.put(list(by_loop.items()))
        self._outbox = []
