"""Text in and out of a llama.cpp model: the chat prompt as tokens, the sampler each
request draws with, and the sampled tokens back as text with its stop sequences.

The prompt is the one llama-cpp-python's ``create_chat_completion`` makes: the GGUF's
own chat template (Jinja2), tokenized with its special tokens parsed and no extra BOS,
except that a turn marker's text inside a message is the plain text it is, as with
OpenAI's models (``llama_markers``).
The sampler is its default chain (top-k 40, top-p 0.95, min-p 0.05, then the
temperature and a seeded draw), or greedy (the highest logit) at temperature 0.
"""

from __future__ import annotations

import codecs
import ctypes
from typing import Any

from skills.inference.engines.base import Message, as_dicts
from skills.inference.engines.llama_markers import Markers

# llama.cpp's "pick a random seed" value.
RANDOM_SEED = 0xFFFFFFFF


class ChatPrompt:
    """Renders messages with the model's chat template and tokenizes them. Reads only the
    model's vocabulary, so any thread may use it while another decodes."""

    def __init__(self, model: Any) -> None:
        from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

        self.model = model
        metadata = model.metadata()
        eos, bos = model.token_eos(), model.token_bos()
        template = metadata.get("tokenizer.chat_template") or CHATML_CHAT_TEMPLATE
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        self.longest_piece = longest_piece(model.vocab)
        self.markers = Markers(model.vocab, template)

    def tokens(self, messages: list[Message], fewer_than: int | None = None) -> list[int]:
        """The prompt's tokens; ``PromptTooLong`` without tokenizing it when the rendered
        prompt is too long for ``fewer_than`` tokens whatever they are: a prompt of megabytes
        is refused at once, where tokenizing it would hold a core for seconds."""
        messages, found = self.markers.hide(messages)
        rendered = self.formatter(messages=as_dicts(messages))  # type: ignore[arg-type]
        text = rendered.prompt
        if fewer_than and self.longest_piece and -(-len(text.encode()) // self.longest_piece) >= fewer_than:
            raise PromptTooLong()
        if fewer_than and len(found) >= fewer_than:  # a masked run is a token at least
            raise PromptTooLong()
        add_bos = not rendered.added_special
        if not found:
            return self._tokenize(text, add_bos, True)
        return self.markers.tokens(self._tokenize, text, found, add_bos)

    def _tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        if not text and not add_bos:
            return []
        return [int(t) for t in self.model.tokenize(text.encode(), add_bos=add_bos, special=special)]

    def prefix_tokens(self, text: str) -> list[int]:
        return [int(t) for t in self.model.tokenize(text.encode(), add_bos=False, special=False)]


class PromptTooLong(Exception):
    """The rendered prompt has more bytes than the most tokens asked for can stand for."""


def longest_piece(vocab: Any) -> int | None:
    """The most bytes any one token stands for, special tokens' text included (40 ms for
    a vocabulary of 49,152); then a text of N bytes makes at least N / that many tokens.
    None where no such bound holds: a vocabulary whose tokenizer drops characters (WPM's
    and UGM's normalizers), or with a token that swallows the whitespace beside it (Phi-3's
    special tokens strip what follows them, however long)."""
    import llama_cpp

    if llama_cpp.llama_vocab_type(vocab) not in (llama_cpp.LLAMA_VOCAB_TYPE_BPE, llama_cpp.LLAMA_VOCAB_TYPE_SPM):
        return None
    strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
    buffer = ctypes.create_string_buffer(256)
    longest = 1
    for token in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
        if llama_cpp.llama_vocab_get_attr(vocab, token) & strips:
            return None
        # A negative length is the size a piece longer than the buffer needs.
        longest = max(longest, abs(llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)))
    return longest


class Vocabulary:
    """What the decoding thread asks of the vocabulary for every token it samples: its text,
    and whether it ends a generation. Each token is asked of llama.cpp once and kept: every
    foreign call lets go of the GIL, and taking it back waits while the event loop's thread
    runs, with the step's other requests waiting too."""

    def __init__(self, vocab: Any) -> None:
        self.vocab = vocab
        self._texts: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}
        self._buffer = ctypes.create_string_buffer(256)

    def text(self, token: int) -> bytes:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self._piece(token)
        return text

    def ends(self, token: int) -> bool:
        end = self._ends.get(token)
        if end is None:
            import llama_cpp

            end = self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return end

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._buffer, len(self._buffer), 0, False)
        if n < 0:
            self._buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._buffer, len(self._buffer), 0, False)
        return self._buffer.raw[:n]


def new_sampler(temperature: float, seed: int | None) -> Any:
    """The request's sampler chain; None at temperature 0, where the engine takes the highest
    logit itself (numpy's argmax: the first of equals, as llama.cpp's greedy sampler) without
    the chain's copy of every logit of the vocabulary, a third of the time."""
    from llama_cpp import _internals

    if temperature == 0:
        return None
    sampler: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
    sampler.add_top_k(40)
    sampler.add_top_p(0.95, 1)
    sampler.add_min_p(0.05, 1)
    sampler.add_temp(temperature)
    sampler.add_dist(RANDOM_SEED if seed is None else seed)
    return sampler


class TextOut:
    """Sampled tokens' bytes in, text out: multi-byte characters split across tokens are
    joined, and text that may be the start of a stop sequence is held back until it is
    known not to be one. ``stopped`` once a stop sequence appears (it is not part of the text)."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded, not yet given out
        self.parts: list[str] = []
        self.stopped = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, piece: bytes) -> str:
        """The text that is certain after this piece ('' while undecided)."""
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(piece)
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._give(self.pending[:cut])
        hold = self._stop_prefix(self.pending)
        ready = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(ready) :]
        return self._give(ready)

    def finish(self) -> str:
        """Whatever was held back, once nothing follows."""
        if self.stopped:
            return ""
        rest = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return self._give(rest)

    def _give(self, text: str) -> str:
        if text:
            self.parts.append(text)
        return text

    def _stop_prefix(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a stop sequence."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
