"""What crosses the wire for the inference skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from skills.base import Money, OpInput
from skills.embeddings import DEFAULT_EMBEDDER
from skills.inference.engines.llama import DEFAULT_MODEL

MODEL = Field(default=DEFAULT_MODEL, description="A model's name from inference_models.")
EMBED_MODEL = Field(
    default=DEFAULT_EMBEDDER, description="A model that makes embeddings, from inference_models (embeddings: true)."
)


class ModelsInput(OpInput):
    pass


class ModelPrices(BaseModel):
    input_per_mtok: Money
    cached_input_per_mtok: Money
    output_per_mtok: Money


class BackendLatency(BaseModel):
    """Measured over the backend's latest successful requests."""

    ttft_p50_ms: float = Field(description="Time to first token, median (the whole call where nothing streams).")
    ttft_p95_ms: float
    samples: int


class BackendInfo(BaseModel):
    name: str
    engine: Literal["llama", "openai", "onnx"]
    available: bool
    detail: str = Field(description="Where it runs, or why it is unavailable.")
    health: Literal["healthy", "out_of_rotation", "half_open"] = Field(
        description="out_of_rotation: it failed repeatedly and is skipped while others can serve; "
        "half_open: the next request probes it."
    )
    back_in_s: float = Field(description="Seconds until it is probed again (0 when in rotation).")
    in_flight: int
    capacity: int = Field(description="Requests it serves at once.")
    failures: int = Field(description="Failed attempts in a row.")
    last_error: str | None
    latency: BackendLatency | None = Field(description="Null until it has answered.")
    cost: ModelPrices = Field(description="What its tokens cost the operator, per million; it steers `cheapest`.")


class ModelInfo(BaseModel):
    name: str
    engine: Literal["llama", "openai", "onnx", "pool"]
    context_length: int
    prices: ModelPrices | None = Field(description="Per million tokens; null when the catalog has no price.")
    available: bool
    detail: str = Field(description="Where it runs, or why it is unavailable.")
    embeddings: bool
    policy: Literal["least_loaded", "cheapest", "lowest_p95"] = Field(
        description="How a request picks one of its backends; one that fails is left for the next."
    )
    backends: list[BackendInfo] = Field(description="What serves the model: one backend, or a pool's several.")


class ModelsOutput(BaseModel):
    models: list[ModelInfo]


class MessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class GenerateInput(OpInput):
    model: str = MODEL
    messages: list[MessageIn] = Field(min_length=1, max_length=500, description="The conversation so far.")
    max_tokens: int = Field(ge=1, le=1_000_000, description="Tokens to generate at most (required).")
    temperature: float = Field(default=0.7, ge=0, le=2)
    stop: list[str] = Field(default_factory=list, max_length=4, description="Sequences that end the text.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="For repeatable sampling.")


class TokenUsage(BaseModel):
    prompt_tokens: int
    cached_tokens: int = Field(description="Prompt tokens the engine reused from its cache, billed at the cached rate.")
    completion_tokens: int


class GenerateOutput(BaseModel):
    model: str
    text: str
    finish_reason: str = Field(description="stop (the model or a stop sequence ended it) or length (max_tokens).")
    usage: TokenUsage
    max_tokens: int = Field(description="max_tokens as applied (clamped to what the context leaves).")
    time_to_first_token_ms: int | None
    duration_ms: int


class EmbedInput(OpInput):
    model: str = EMBED_MODEL
    input: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(
        min_length=1, max_length=256, description="Texts to embed (none empty)."
    )


class EmbedOutput(BaseModel):
    model: str
    vectors: list[list[float]]
    dimensions: int
    prompt_tokens: int
