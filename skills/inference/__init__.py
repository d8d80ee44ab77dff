"""The inference skill: local llama.cpp models and OpenAI-compatible endpoints, billed per token."""

from __future__ import annotations

from skills.base import Op
from skills.inference import models as m
from skills.inference import ops
from skills.inference.catalog import from_platform
from skills.registry import skill_from_doc

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "models",
            "The models offered: context length, prices per million tokens, availability.",
            m.ModelsInput,
            m.ModelsOutput,
            ops.models,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "generate",
            "Generate a chat reply with a model (max_tokens required); the text streams as progress notifications.",
            m.GenerateInput,
            m.GenerateOutput,
            ops.generate,
            timeout_s=lambda a: ops.GENERATE_DEADLINE_S,
            worst_case=ops.generate_worst_case,
            runs_long=lambda a: True,
            ask_less="a smaller max_tokens, shorter messages",
        ),
        Op(
            "embed",
            "Embed texts with a model that makes embeddings; returns one vector per text.",
            m.EmbedInput,
            m.EmbedOutput,
            ops.embed,
            read_only=True,
            metered=True,
            idempotent=True,
            timeout_s=lambda a: ops.GENERATE_DEADLINE_S,
            worst_case=ops.embed_worst_case,
            ask_less="fewer or shorter texts",
        ),
    ),
    resource=from_platform,
)
