"""The process's sentence-embedding model (skills/embeddings.py) as an inference engine:
it makes embeddings and nothing else."""

from __future__ import annotations

from common.errors import InvalidInput
from skills.embeddings import TextEmbedder
from skills.inference.engines.base import Completion, Embeddings, GenerateRequest, ModelSpec, OnText


def embedder_spec(embedder: TextEmbedder) -> ModelSpec:
    return ModelSpec(name=embedder.name, engine="onnx", context_length=embedder.max_tokens, embeddings=True, slots=1)


class OnnxEmbedEngine:
    def __init__(self, spec: ModelSpec, embedder: TextEmbedder) -> None:
        self.spec = spec
        self.embedder = embedder

    def availability(self) -> tuple[bool, str]:
        return self.embedder.availability()

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        raise InvalidInput(
            f"model {self.spec.name!r} makes embeddings only: use it with inference_embed, and another model "
            "(inference_models lists them) with inference_generate."
        )

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        embedded = await self.embedder.embed(texts)
        return Embeddings(vectors=embedded.lists(), prompt_tokens=embedded.total_tokens)

    async def close(self) -> None:
        """The embedder is the process's, shared with other skills: the process closes it."""
