"""What every model engine does, and the plain values it answers with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

# Called with each piece of text as the model produces it.
OnText = Callable[[str], Awaitable[None]]


class TokenCost(BaseModel):
    """What a million tokens through one backend cost the operator, in micro-units (for
    a pool's `cheapest` policy; what a tenant pays is the served model's price)."""

    input_per_mtok: int = Field(default=0, ge=0)
    cached_input_per_mtok: int = Field(default=0, ge=0)
    output_per_mtok: int = Field(default=0, ge=0)


class ModelSpec(BaseModel):
    """A model this server offers: from the built-in default or the `models` setting."""

    name: str
    engine: Literal["llama", "openai", "onnx", "pool"]
    context_length: int = Field(default=2048, ge=16)
    slots: int = Field(
        default=1, ge=1, le=64, description="Requests served at once (llama: decoded together, one lane each)."
    )
    # llama: a GGUF file.
    path: str | None = None
    threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all cores).")
    pieces_per_s: float = Field(
        default=60.0,
        ge=0,
        description="llama: about how many pieces of text a second the engine streams in all once many requests "
        "share it (each request at most one piece per (requests - 1) / pieces_per_s seconds, its first at once); "
        "a request alone gets its text as it comes. 0: no pacing, text goes out as soon as the caller takes it.",
    )
    # openai: an OpenAI-compatible endpoint.
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = Field(default=None, description="The environment variable holding the API key.")
    remote_name: str | None = Field(default=None, description="The model's name at the endpoint (default: name).")
    stream: bool = Field(
        default=True,
        description="Stream tokens from the endpoint; needs one that reports usage at the end of a stream "
        "(stream_options.include_usage), as vLLM, Ollama and OpenAI do.",
    )
    embeddings: bool = False
    timeout_s: float = Field(default=120.0, gt=0)
    # Any backend: what its tokens cost the operator.
    cost: TokenCost = Field(default_factory=TokenCost)
    # pool: one served name for several backends, each a model of its own kind.
    backends: list[ModelSpec] = Field(default_factory=list, description="A pool's backends, tried in this order.")
    policy: Literal["least_loaded", "cheapest", "lowest_p95"] = Field(
        default="least_loaded", description="How a pool picks a backend for each request."
    )
    breaker_failures: int = Field(default=3, ge=1, description="Failures in a row that take a backend out of rotation.")
    breaker_open_s: float = Field(default=30.0, gt=0, description="Seconds a failing backend stays out of rotation.")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class Spent:
    """What an engine had done for a request when the request was stopped (its caller
    cancelled it, or its deadline passed): the prompt tokens it computed or read from its
    cache, and the tokens it sampled. It stays zero for a request that failed before the
    model did anything, and for one that finished (its Completion says what it used)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, done: Completion) -> Spent:
        """All that a finished request used."""
        return cls(done.prompt_tokens, done.cached_tokens, done.completion_tokens)

    def record(self, other: Spent) -> None:
        self.prompt_tokens, self.cached_tokens, self.completion_tokens = (
            other.prompt_tokens,
            other.cached_tokens,
            other.completion_tokens,
        )


@dataclass(frozen=True)
class GenerateRequest:
    messages: list[Message]
    max_tokens: int
    temperature: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Filled in by the engine that was generating when the request was stopped, so that
    # what it produced until then is billed.
    spent: Spent = field(default_factory=Spent, compare=False)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    cached_tokens: int  # of prompt_tokens, read from the engine's cache instead of computed
    completion_tokens: int


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Engine(Protocol):
    spec: ModelSpec

    def availability(self) -> tuple[bool, str]:
        """Whether the engine can serve now, and why not."""
        ...

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion: ...

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings: ...

    async def close(self) -> None: ...


# What a chat template may add beyond each message's framing: a default system prompt it
# puts in when the messages have none (SmolLM2's is 15 tokens, Llama 3's about 25).
TEMPLATE_PREAMBLE = 128


def prompt_bound(messages: list[Message]) -> int:
    """At most how many tokens these messages make as a prompt: no token covers less than
    a byte, a chat template adds a few per message, and perhaps a preamble of its own. The
    hold at admission is priced from it, and a task is never charged more than it held."""
    return sum(len(m.content.encode()) + len(m.role) + 8 for m in messages) + 8 + TEMPLATE_PREAMBLE


def as_dicts(messages: list[Message]) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in messages]
