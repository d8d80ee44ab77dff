"""Any OpenAI-compatible endpoint (vLLM, llama.cpp's server, Ollama, DashScope's
compatible mode, OpenAI) by base URL, key and model name.

The usage billed is the one the endpoint reports, cached prompt tokens
included where it reports them (``usage.prompt_tokens_details.cached_tokens``).
A streamed request asks for that usage at the end of the stream; an endpoint
that cannot give it is configured with ``stream = false``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2 as httpx

from common.errors import BackendTimeout, BackendUnavailable, InvalidInput
from skills.inference.engines.base import (
    Completion,
    Embeddings,
    GenerateRequest,
    ModelSpec,
    OnText,
    Spent,
    as_dicts,
)
from skills.inference.slots import FairSlots

# HTTP statuses that say the endpoint cannot serve, whatever the request.
BACKEND_FAULTS = frozenset({401, 403, 404, 408, 429})


def usage_of(answer: dict[str, Any]) -> tuple[int, int, int]:
    usage = answer.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens", 0)),
        int(details.get("cached_tokens") or 0),
        int(usage.get("completion_tokens", 0)),
    )


class OpenAIEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.slots: FairSlots[int] = FairSlots(list(range(spec.slots)))
        key = spec.api_key or (os.environ.get(spec.api_key_env) if spec.api_key_env else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(
            base_url=(spec.base_url or "").rstrip("/"), headers=headers, timeout=spec.timeout_s
        )

    @property
    def remote_name(self) -> str:
        return self.spec.remote_name or self.spec.name

    def availability(self) -> tuple[bool, str]:
        if not self.spec.base_url:
            return False, "no base_url is configured for it"
        return True, f"OpenAI-compatible endpoint {self.spec.base_url}"

    async def generate(self, tenant: str, request: GenerateRequest, on_text: OnText) -> Completion:
        body: dict[str, Any] = {
            "model": self.remote_name,
            "messages": as_dicts(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        async with self.slots.slot(tenant), self._reaching():
            if self.spec.stream:
                return await self._streamed(body, on_text, request.spent)
            answer = await self._post("/chat/completions", body)
        choice = answer["choices"][0]
        text = choice["message"].get("content") or ""
        if text:
            await on_text(text)
        prompt, cached, completion = usage_of(answer)
        return Completion(text, choice.get("finish_reason") or "stop", prompt, cached, completion)

    async def _streamed(self, body: dict[str, Any], on_text: OnText, spent: Spent) -> Completion:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        finish = "stop"
        usage: tuple[int, int, int] | None = None
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                self._refused(response)
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("usage"):
                        usage = usage_of(chunk)
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            pieces.append(text)
                            await on_text(text)
                        finish = choice.get("finish_reason") or finish
            except anyio.get_cancelled_exc_class():
                # Stopped (cancelled, past its deadline) before the endpoint's usage came, which
                # comes last: each piece streamed holds at least one token, so they are billed
                # as that many and no more; the prompt's tokens are not known, and not billed.
                # (The endpoint's own failure is a failed attempt, and costs nothing.)
                spent.record(Spent(completion_tokens=len(pieces)))
                raise
        if usage is None:
            raise BackendUnavailable(
                f"the endpoint of {self.spec.name!r} streamed no token usage, so the call cannot be billed: "
                "configure the model with stream = false."
            )
        return Completion("".join(pieces), finish, *usage)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        if response.status_code >= 400:
            self._refused(response)
        answer: dict[str, Any] = response.json()
        return answer

    def _refused(self, response: Any) -> None:
        try:
            detail = response.json().get("error", {})
            message = detail.get("message") if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            message = response.text[:300]
        # The request's own fault; an endpoint that is rate limited, lacks the model or refuses
        # our key is failing on its side, and a pool tries another backend.
        if 400 <= response.status_code < 500 and response.status_code not in BACKEND_FAULTS:
            raise InvalidInput(f"the endpoint of {self.spec.name!r} refused the request: {message}")
        raise BackendUnavailable(
            f"the endpoint of {self.spec.name!r} failed (HTTP {response.status_code}: {message}); try again later."
        )

    def _reaching(self) -> contextlib.AbstractAsyncContextManager[None]:
        return reaching_endpoint(self.spec)

    async def embed(self, tenant: str, texts: list[str]) -> Embeddings:
        async with self.slots.slot(tenant), self._reaching():
            answer = await self._post("/embeddings", {"model": self.remote_name, "input": texts})
        vectors = [item["embedding"] for item in sorted(answer["data"], key=lambda d: d.get("index", 0))]
        prompt, _, _ = usage_of(answer)
        return Embeddings(vectors=vectors, prompt_tokens=prompt)

    async def close(self) -> None:
        await self.client.aclose()


@contextlib.asynccontextmanager
async def reaching_endpoint(spec: ModelSpec) -> AsyncIterator[None]:
    """Transport errors as our errors: a down endpoint, or one too slow."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise BackendTimeout(
            f"the endpoint of {spec.name!r} did not answer within {spec.timeout_s:g} s; "
            "try again later, or with a smaller max_tokens."
        ) from exc
    except httpx.TransportError as exc:
        raise BackendUnavailable(
            f"the endpoint of {spec.name!r} ({spec.base_url}) cannot be reached ({type(exc).__name__}); "
            "check that it is up, then try again."
        ) from exc
