"""The OpenAI API's shapes, as runtime/openai_api.py reads and answers them: requests to
tool arguments, tool results to responses, our errors to OpenAI error bodies."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.errors import CloudSkillsError

# max_tokens for a request that names none: the tools need a bound to hold the budget.
DEFAULT_MAX_TOKENS = 512

# Our error codes as HTTP statuses and OpenAI error types.
STATUS: dict[str, tuple[int, str]] = {
    "invalid_input": (400, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "forbidden": (403, "permission_error"),
    "budget_exceeded": (402, "insufficient_quota"),
    "quota_exceeded": (429, "rate_limit_exceeded"),
    "timed_out": (504, "timeout"),
    "backend_unavailable": (503, "service_unavailable"),
    "cancelled": (409, "cancelled"),
    "failed": (500, "server_error"),
}


class Loose(BaseModel):
    """Sampling hints we do not apply (top_p, presence_penalty, ...) and fields for the
    caller's own records (user, metadata) are accepted and ignored; those that ask for what
    the models cannot give (tools, a JSON format, log probabilities, fewer dimensions) are
    named below and refused (``unsupported``)."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(Loose):
    type: str
    text: str | None = None


class ChatMessage(Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(Loose):
    include_usage: bool = False


class ChatRequest(Loose):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None


class EmbeddingRequest(Loose):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def unsupported(parameter: str, what_to_do: str) -> Refused:
    return Refused(400, f"{parameter} is not supported here: {what_to_do}", code="unsupported_parameter")


def refuse_unsupported_chat(request: ChatRequest) -> None:
    """A client that asks for tools, JSON or log probabilities must hear no, not get plain
    text it would take for an answer that honoured them."""
    if request.tools and request.tool_choice != "none":  # "none": the tools are listed, not to be called
        raise unsupported("tools", "the served models answer in text only; describe the tools in the messages.")
    kind = (request.response_format or {}).get("type", "text")
    if kind != "text":
        raise unsupported(
            f"response_format {kind!r}", "ask for JSON in the messages and parse the text, or leave it out."
        )
    if request.logprobs:
        raise unsupported("logprobs", "leave it out (or false).")


def refuse_unsupported_embedding(request: EmbeddingRequest) -> None:
    if request.dimensions is not None:
        raise unsupported(
            "dimensions", "each model gives vectors of its own size (GET /v1/models lists the models); leave it out."
        )


class Refused(Exception):
    """A request the API cannot take as sent, answered with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}


def refused(exc: CloudSkillsError) -> Refused:
    status, kind = STATUS.get(exc.code, (500, "server_error"))
    code = "model_not_found" if exc.code == "not_found" and "no model" in exc.message else exc.code
    return Refused(status, exc.message, kind, code)


def text_of(message: ChatMessage) -> str:
    """The message's text; a part of another kind is refused, as the models would never see it."""
    if isinstance(message.content, list):
        for part in message.content:
            if part.type != "text":
                raise Refused(
                    400,
                    f"a {message.role} message has a content part of type {part.type!r}: the served models "
                    "take text only. Send the content as text parts "
                    '({"type": "text", "text": ...}), or leave that part out.',
                    code="unsupported_content",
                )
        return "".join(part.text or "" for part in message.content)
    return message.content or ""


def max_tokens_of(request: ChatRequest) -> int:
    """The request's bound on generated tokens: max_completion_tokens (OpenAI's newer name)
    if given, else max_tokens, else ours. 0 is given, not absent: read as absent, it would
    generate (and bill) DEFAULT_MAX_TOKENS tokens instead of refusing."""
    name, given = "max_completion_tokens", request.max_completion_tokens
    if given is None:
        name, given = "max_tokens", request.max_tokens
    if given is None:
        return DEFAULT_MAX_TOKENS
    if given < 1:
        raise Refused(
            400,
            f"{name} must be at least 1, not {given}: ask for 1 or more tokens, "
            f"or leave it out for at most {DEFAULT_MAX_TOKENS}.",
            code="invalid_input",
        )
    return given


def generate_arguments(request: ChatRequest) -> dict[str, Any]:
    """``inference_generate``'s arguments for a chat request."""
    if request.n != 1:
        raise Refused(400, "n must be 1: ask for one choice per request.", code="unsupported_parameter")
    refuse_unsupported_chat(request)
    arguments: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": "system" if m.role == "developer" else m.role, "content": text_of(m)} for m in request.messages
        ],
        "max_tokens": max_tokens_of(request),
    }
    if request.temperature is not None:
        arguments["temperature"] = request.temperature
    if request.stop:
        arguments["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.seed is not None:
        arguments["seed"] = request.seed
    return arguments


def usage(result: dict[str, Any]) -> dict[str, Any]:
    used = result["usage"]
    return {
        "prompt_tokens": used["prompt_tokens"],
        "completion_tokens": used["completion_tokens"],
        "total_tokens": used["prompt_tokens"] + used["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": used["cached_tokens"]},
    }


def billing(result: dict[str, Any]) -> dict[str, Any]:
    """What this request was, on our side: its task and what it cost (extra fields OpenAI
    clients keep and ignore)."""
    return {"task_id": result["task_id"], "cost": result["cost"]}


def completion(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result['task_id']}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["text"]},
                "finish_reason": result["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "cloudskills": billing(result),
    }


def chunk(chat_id: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": chat_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def embeddings(result: dict[str, Any], encoding: str) -> dict[str, Any]:
    def encoded(vector: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encoded(vector)}
            for i, vector in enumerate(result["vectors"])
        ],
        "model": result["model"],
        "usage": {"prompt_tokens": result["prompt_tokens"], "total_tokens": result["prompt_tokens"]},
        "cloudskills": billing(result),
    }


def model_list(result: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list", "data": offered_models(result)}


def model_of(result: dict[str, Any], name: str) -> dict[str, Any]:
    """The model ``model_list`` lists as ``name``; a 404 for one it does not list."""
    for model in offered_models(result):
        if model["id"] == name:
            return model
    raise Refused(
        404,
        f"no model {name!r} is offered: GET /v1/models lists the ones that are.",
        code="model_not_found",
    )


def offered_models(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The models ``inference_models``' result says are available now, as OpenAI's model objects."""
    return [model_object(model) for model in result["models"] if model["available"]]


def model_object(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": model["name"],
        "object": "model",
        "created": 0,
        "owned_by": "cloudskills",
        "context_length": model["context_length"],
    }
