"""An OpenAI-compatible API on the HTTP server: ``/v1/chat/completions`` (streamed or
not), ``/v1/embeddings``, ``/v1/models`` and ``/v1/models/{model}``.

Each request is a call of a tool (``inference_generate``, ``inference_embed``,
``inference_models``) on the one call path: its arguments validated once
(``App.prepare``), then a task of the key's tenant (``App.run``) with the same
admission, hold, quotas and exact settlement as over MCP, listed by tasks_list and
billed in billing_usage. The key is the same bearer key as for ``/mcp``.

A request refused before any text exists (a bad key, bad arguments, the budget, a
quota, a backend down) gets its HTTP status and an OpenAI error body; a stream only
starts with the first piece of text, so a refusal is never hidden in a 200. An error
after that ends the stream with an ``error`` event. A client that hangs up cancels
its task. Any other path under ``/v1``, or a wrong method, gets an OpenAI error too.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from common.errors import CloudSkillsError
from runtime import openai_wire as wire
from runtime.app import App, PreparedCall
from runtime.bearer import verified_caller
from runtime.tenants import Caller

log = logging.getLogger("cloudskills.openai")

# What a running call tells the response: a piece of text, its result, or its error.
Event = tuple[str, Any]


def error_response(refusal: wire.Refused, headers: dict[str, str] | None = None) -> JSONResponse:
    if refusal.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)


def caller_of(request: Request) -> Caller:
    """The tenant (and agent) of the request's bearer key, as for /mcp."""
    caller = verified_caller(request.scope)
    if caller is None:
        raise wire.Refused(
            401,
            "this request carries no valid API key: send `Authorization: Bearer <key>` with a live key "
            "(`cloudskills keys create`).",
            code="invalid_api_key",
        )
    return caller


async def body_as(request: Request, model: type[wire.ChatRequest] | type[wire.EmbeddingRequest]) -> Any:
    try:
        return model.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        problem = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else describe(exc)
        raise wire.Refused(400, f"the request body is not valid: {problem}.") from None


def describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])


def handled(
    endpoint: Callable[[App, Request], Awaitable[Response]], app: App
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint with our errors as OpenAI error responses."""

    async def handle(request: Request) -> Response:
        try:
            return await endpoint(app, request)
        except wire.Refused as refusal:
            return error_response(refusal)
        except CloudSkillsError as exc:
            return error_response(wire.refused(exc))
        except Exception:
            log.exception("%s %s crashed", request.method, request.url.path)
            return error_response(
                wire.Refused(500, "an internal error, which was logged; try again later.", "server_error")
            )

    return handle


async def models(app: App, request: Request) -> Response:
    return JSONResponse(wire.model_list(await offered(app, request)))


async def model(app: App, request: Request) -> Response:
    return JSONResponse(wire.model_of(await offered(app, request), request.path_params["model"]))


async def offered(app: App, request: Request) -> dict[str, Any]:
    """``inference_models``' result, a task of the key's tenant like any other call."""
    caller = caller_of(request)
    outcome = await app.call(caller.tenant_id, "inference_models", {}, agent=caller.agent)
    return outcome.unwrap()


async def embeddings(app: App, request: Request) -> Response:
    caller = caller_of(request)
    body: wire.EmbeddingRequest = await body_as(request, wire.EmbeddingRequest)
    wire.refuse_unsupported_embedding(body)
    texts = [body.input] if isinstance(body.input, str) else body.input
    arguments = {"model": body.model, "input": texts}
    outcome = await app.call(caller.tenant_id, "inference_embed", arguments, agent=caller.agent)
    return JSONResponse(wire.embeddings(outcome.unwrap(), body.encoding_format))


async def chat_completions(app: App, request: Request) -> Response:
    caller = caller_of(request)
    body: wire.ChatRequest = await body_as(request, wire.ChatRequest)
    prepared = app.prepare("inference_generate", wire.generate_arguments(body))
    return ChatResponse(app, caller, prepared, body)


class ChatResponse(Response):
    """Runs the call while it answers: waits for its first piece of text (or its end) before
    choosing between an error, a JSON body, or a stream of chunks."""

    def __init__(self, app: App, caller: Caller, prepared: PreparedCall, body: wire.ChatRequest) -> None:
        super().__init__()
        self.app, self.caller, self.prepared, self.chat = app, caller, prepared, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender, events = anyio.create_memory_object_stream[Event](max_buffer_size=math.inf)
        async with anyio.create_task_group() as group:
            group.start_soon(self._run, sender)
            group.start_soon(self._hang_up, receive, group.cancel_scope)
            async with events:
                await self._answer(events, scope, send)
            group.cancel_scope.cancel()

    async def _run(self, events: MemoryObjectSendStream[Event]) -> None:
        async def progress(count: float, text: str | None) -> None:
            if text:
                events.send_nowait(("text", text))

        async with events:
            try:
                outcome = await self.app.run(self.caller.tenant_id, self.prepared, progress, self.caller.agent)
                events.send_nowait(("done", outcome.unwrap()))
            except CloudSkillsError as exc:
                events.send_nowait(("error", wire.refused(exc)))
            except Exception:
                log.exception("a chat completion crashed")
                events.send_nowait(("error", wire.Refused(500, "an internal error, which was logged.", "server_error")))

    async def _hang_up(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """A client that disconnects cancels the call (and so its task)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _answer(self, events: MemoryObjectReceiveStream[Event], scope: Scope, send: Send) -> None:
        kind, value = await events.receive()
        if kind == "error":
            await error_response(value)(scope, never, send)
            return
        if not self.chat.stream:
            while kind == "text":
                kind, value = await events.receive()
            response = error_response(value) if kind == "error" else JSONResponse(wire.completion(value))
            await response(scope, never, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        # The task's id is known at its end: the chunks share an id of their own, and the
        # last one names the task (``cloudskills.task_id``).
        chat_id, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", self.chat.model
        first = True
        while True:
            if kind == "text":
                delta = {"role": "assistant", "content": value} if first else {"content": value}
                first = False
                await sse(send, wire.chunk(chat_id, model, delta))
            elif kind == "error":
                await sse(send, value.body())
                break
            else:
                last = wire.chunk(chat_id, model, {} if not first else {"role": "assistant", "content": ""})
                last["choices"][0]["finish_reason"] = value["finish_reason"]
                last["cloudskills"] = wire.billing(value)
                await sse(send, last)
                options = self.chat.stream_options
                if options is not None and options.include_usage:
                    usage_chunk = wire.chunk(chat_id, model, {})
                    usage_chunk.update(choices=[], usage=wire.usage(value))
                    await sse(send, usage_chunk)
                break
            kind, value = await events.receive()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def never() -> dict[str, Any]:
    """The receive of a response sent while ``_hang_up`` reads the real one."""
    await anyio.sleep_forever()
    return {}


SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def sse(send: Send, data: dict[str, Any] | BaseModel) -> None:
    payload = data if isinstance(data, dict) else data.model_dump()
    line = f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
    await send({"type": "http.response.body", "body": line, "more_body": True})


def openai_routes(app: App) -> list[BaseRoute]:
    """The API's routes, for the server's ASGI app (runtime/server.py ``http_app``)."""
    served = [
        Route("/v1/models", handled(models, app), methods=["GET"]),
        # ``path``: a model's name may hold a slash (``org/model``), as OpenAI clients send it.
        Route("/v1/models/{model:path}", handled(model, app), methods=["GET"]),
        Route("/v1/chat/completions", handled(chat_completions, app), methods=["POST"]),
        Route("/v1/embeddings", handled(embeddings, app), methods=["POST"]),
    ]
    # Every method, named: a Route of a function takes GET alone unless told.
    every_method = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [*served, Route("/v1/{path:path}", unserved(served), methods=every_method)]


def unserved(served: list[Route]) -> Callable[[Request], Awaitable[Response]]:
    """The rest of /v1 as OpenAI errors (404, or 405 for a served path asked with another
    method) rather than Starlette's plain text, which OpenAI clients cannot read. Starlette
    tries this route last and prefers it, a full match, to a served path's method mismatch,
    so it tells the two apart itself."""

    async def answer(request: Request) -> Response:
        allowed = sorted(
            {
                method
                for route in served
                if route.matches(request.scope)[0] == Match.PARTIAL
                for method in (route.methods or set()) - {"HEAD"}
            }
        )
        if allowed:
            refusal = wire.Refused(
                405,
                f"{request.method} is not allowed on {request.url.path}: use {' or '.join(allowed)}.",
                code="method_not_allowed",
            )
            return error_response(refusal, {"Allow": ", ".join(allowed)})
        return error_response(
            wire.Refused(
                404,
                f"no endpoint {request.method} {request.url.path}: this API serves "
                f"{', '.join(described(route) for route in served)}.",
                code="unknown_url",
            )
        )

    return answer


def described(route: Route) -> str:
    # Starlette adds HEAD to every GET route: no client of this API means that one.
    return f"{' or '.join(sorted((route.methods or set()) - {'HEAD'}))} {route.path}"
