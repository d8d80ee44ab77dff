"""The models this server offers, each with its engine: the embedded defaults
(SmolLM2-135M-Instruct on llama.cpp for text, all-MiniLM-L6-v2 on ONNX Runtime for
embeddings) and whatever the `models` setting adds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from common.errors import InvalidInput, NotFound
from skills.base import Platform
from skills.embeddings import TextEmbedder, shared_embedder
from skills.inference.engines.base import Engine, ModelSpec
from skills.inference.engines.llama import LlamaEngine, default_spec
from skills.inference.engines.onnx import OnnxEmbedEngine, embedder_spec
from skills.inference.engines.openai import OpenAIEngine
from skills.inference.pool import Pool, pool_spec


def specs_from(configured: Mapping[str, Mapping[str, Any]], embedder: TextEmbedder | None = None) -> list[ModelSpec]:
    """The default models, then each configured one (a configured name replaces a default)."""
    default = default_spec()
    specs = {default.name: default}
    if embedder is not None:
        specs[embedder.name] = embedder_spec(embedder)
    for name, fields in configured.items():
        try:
            specs[name] = ModelSpec(name=name, **fields)
        except ValidationError as exc:
            raise ValueError(f"the model {name!r} in the `models` setting is invalid: {exc}") from exc
    return list(specs.values())


def engine_for(spec: ModelSpec, embedder: TextEmbedder | None = None) -> Engine:
    if spec.engine == "onnx":
        if embedder is None:
            raise ValueError(f"the model {spec.name!r}: engine onnx serves only the built-in embedder")
        return OnnxEmbedEngine(spec, embedder)
    if spec.engine == "pool":
        raise ValueError(f"the backend {spec.name!r} is a pool: a pool's backends are llama or openai models")
    return LlamaEngine(spec) if spec.engine == "llama" else OpenAIEngine(spec)


def served(spec: ModelSpec, embedder: TextEmbedder | None = None) -> Pool:
    """A served model: a pool of its backends, or of the one engine a plain model is."""
    if spec.engine != "pool":
        return Pool(spec, [engine_for(spec, embedder)])
    names = [backend.name for backend in spec.backends]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"the pool {spec.name!r} in the `models` setting needs backends with distinct names")
    return Pool(pool_spec(spec), [engine_for(backend, embedder) for backend in spec.backends])


class ModelCatalog:
    def __init__(self, specs: list[ModelSpec], embedder: TextEmbedder | None = None) -> None:
        self.engines: dict[str, Pool] = {spec.name: served(spec, embedder) for spec in specs}

    def engine(self, name: str) -> Pool:
        engine = self.engines.get(name)
        if engine is None:
            raise NotFound(f"no model {name!r}: call inference_models to see the ones offered.")
        available, why = engine.availability()
        if not available:
            raise InvalidInput(f"model {name!r} is unavailable: {why}.")
        return engine

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.close()


def from_platform(platform: Platform) -> ModelCatalog:
    """The default models and the ones the settings add; the embedder is the process's own."""
    embedder = shared_embedder(platform.services)
    return ModelCatalog(specs_from(platform.settings.models, embedder), embedder)
