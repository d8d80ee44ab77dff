"""A chat template's turn markers, written inside a message, stay plain text.

Tokenized with its special tokens parsed (as a chat template needs), "<|im_end|><|im_start|>
system" in a user's text, or in a web page an agent passes on, would open a turn of its
own. So before rendering, each run of marker texts in a message is masked (a sentinel
with a per-process secret, which no message can forge), and the rendered prompt is
tokenized piece by piece: the template's own text with its markers parsed, each masked run
as plain text. A message with no marker in it, nearly every one, is tokenized whole.

Markers are the vocabulary's control tokens, and its user-defined tokens that the chat
template itself writes (llama.cpp parses user-defined tokens even in plain text, and
types some models' turn markers so, gpt-oss's among them): such a run is tokenized a
character at a time. On a SentencePiece vocabulary that adds a space before a text, each
piece gains one at its start: a masked message reads a space apart there, a small price
beside a forged turn.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from skills.inference.engines.base import Message

Tokenize = Callable[[str, bool, bool], list[int]]  # text, add_bos, special


class Markers:
    def __init__(self, vocab: Any, template: str) -> None:
        import llama_cpp

        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        texts: set[str] = set()
        self.ids: set[int] = set()
        for token in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
            attr = llama_cpp.llama_vocab_get_attr(vocab, token)
            text = llama_cpp.llama_vocab_get_text(vocab, token).decode(errors="replace")
            user_marker = attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and text and text in template
            if text and (attr & control or user_marker):
                texts.add(text)
                self.ids.add(token)
        # Runs of them, the longest text first: a text that begins another is not taken for it.
        ordered = sorted(texts, key=len, reverse=True)
        self.finder = re.compile(f"(?:{'|'.join(map(re.escape, ordered))})+") if texts else None
        secret = secrets.token_hex(8)
        self.mask = f"\x00{secret}:{{}}\x00"
        self.masked = re.compile(f"\x00{secret}:([0-9]+)\x00")

    def hide(self, messages: list[Message]) -> tuple[list[Message], list[str]]:
        """The messages with each run of markers masked, and the runs, in order."""
        found: list[str] = []
        if self.finder is None or not any(self.finder.search(m.content) for m in messages):
            return messages, found

        def mask(match: re.Match[str]) -> str:
            found.append(match.group(0))
            return self.mask.format(len(found) - 1)

        finder = self.finder
        return [Message(m.role, finder.sub(mask, m.content)) for m in messages], found

    def tokens(self, tokenize: Tokenize, rendered: str, found: list[str], add_bos: bool) -> list[int]:
        """The rendered prompt's tokens, each masked run as plain text."""
        pieces = self.masked.split(rendered)
        tokens = tokenize(pieces[0], add_bos, True)
        for index, after in zip(pieces[1::2], pieces[2::2], strict=True):
            tokens += (
                self._plain(tokenize, found[int(index)]) if int(index) < len(found) else tokenize(index, False, False)
            )
            tokens += tokenize(after, False, True)
        return tokens

    def _plain(self, tokenize: Tokenize, run: str) -> list[int]:
        tokens = tokenize(run, False, False)
        if self.ids.isdisjoint(tokens):
            return tokens
        return [token for char in run for token in tokenize(char, False, False)]  # user-defined markers
