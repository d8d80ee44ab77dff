"""The MCP server: every op of every skill as a tool ``<skill>_<op>``, every SKILL.md as a resource.

Tools are listed and called from the skills registry rather than from Python
signatures, so the input schema is exactly the op's pydantic model and the
errors are ours: one sentence that says what to do, never a stack trace.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from mcp_types import Tool as MCPTool
from pydantic import AnyHttpUrl
from starlette.applications import Starlette

from common.errors import CloudSkillsError, Forbidden
from runtime import logs
from runtime.app import App
from runtime.bearer import KeyVerifier, caller_of_token
from runtime.confirm import confirm
from runtime.mcp_skills import SkillsExtension
from runtime.mcp_tasks import TasksExtension, tool_error, tool_result
from runtime.openai_api import openai_routes
from runtime.stdio import exit_at_once, run_stdio
from runtime.tenants import check_agent
from runtime.web import metrics_app, split_address, web_routes
from scheduler.tasks import Progress, RateLimited

log = logging.getLogger("cloudskills.server")

INSTRUCTIONS = (
    "cloudskills runs cloud operations as tools. Read a skill's guide as the resource "
    "skill://<name>/SKILL.md before its first use; its references/ERRORS.md says what to do "
    "about each error, references/EXAMPLE.md shows a typical session. Every call is a task billed by the task "
    "and by what it used; billing_usage shows the charges."
)


def http_auth(base_url: str) -> AuthSettings:
    # We are the resource server only; keys are issued by `cloudskills keys create`.
    return AuthSettings(
        issuer_url=AnyHttpUrl(base_url),
        resource_server_url=AnyHttpUrl(f"{base_url}/mcp"),
        validate_token_resource=False,
    )


class CloudSkillsServer(MCPServer[Any]):
    """``tenant_id`` set: every call acts for that tenant, as ``agent`` (stdio). None: the bearer
    key decides both (HTTP)."""

    def __init__(self, app: App, tenant_id: str | None, base_url: str | None = None, agent: str | None = None) -> None:
        self.tasks = TasksExtension(app, lambda: self.tenant_for(None), self.agent_for)
        self.agent_skills = SkillsExtension(app.registry)
        extensions, middleware = [self.tasks, self.agent_skills], [self.agent_skills.advertise_on_legacy]
        if tenant_id is None:
            assert base_url is not None, "an HTTP server needs its base URL for its auth metadata"
            super().__init__(
                name="cloudskills",
                instructions=INSTRUCTIONS,
                version="0.1.0",
                token_verifier=KeyVerifier(app),
                auth=http_auth(base_url),
                extensions=extensions,
                middleware=middleware,
            )
        else:
            super().__init__(
                name="cloudskills",
                instructions=INSTRUCTIONS,
                version="0.1.0",
                extensions=extensions,
                middleware=middleware,
            )
        self.app = app
        self.tenant_id = tenant_id
        self.agent = check_agent(agent)
        self._tools = self._describe_tools()

    def _describe_tools(self) -> list[MCPTool]:
        tools = []
        for name, _skill, op in self.app.registry.tools():
            tools.append(
                MCPTool(
                    name=name,
                    description=op.description,
                    input_schema=op.input.model_json_schema(),
                    output_schema=op.wire_output.model_json_schema(),
                    annotations=ToolAnnotations(
                        read_only_hint=op.read_only,
                        destructive_hint=op.destructive,
                        idempotent_hint=op.idempotent,
                        open_world_hint=op.open_world,
                    ),
                )
            )
        return tools

    async def list_tools(self) -> list[MCPTool]:
        return self._tools

    def tenant_for(self, context: Context[Any, Any] | None) -> str:
        """The tenant a call acts for: the server's own over stdio, the key's over HTTP."""
        if self.tenant_id is not None:
            return self.tenant_id
        token = get_access_token()
        if token is None:
            raise Forbidden("this call carries no valid API key: send `Authorization: Bearer <key>`.")
        return token.client_id

    def agent_for(self) -> str | None:
        """The tenant's agent a call acts as: the server's own over stdio, the key's over HTTP."""
        if self.tenant_id is not None:
            return self.agent
        token = get_access_token()
        return caller_of_token(token).agent if token is not None else None

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            prepared = self.app.prepare(name, arguments)
            asks = prepared.op.confirms(prepared.args)
            if asks and context is not None and not self.app.settings.auto_confirm:
                # Asked only of a valid call: nobody confirms what would then be refused.
                instead = await confirm(context, name, arguments)
                if instead is not None:
                    return instead
            outcome = await self.app.run(self.tenant_for(context), prepared, progress_to(context), self.agent_for())
        except CloudSkillsError as exc:
            return tool_error(exc.message)
        except Exception:
            log.exception("tool %s crashed", name)
            return tool_error(f"{name} failed with an internal error, which was logged; try again later.")
        return tool_result(outcome.unwrap())


# The MCP spec asks senders to rate-limit progress notifications: at most ten a second per
# call. Streamed text comes in fewer, larger pieces (a /v1 stream is not limited).
MCP_PROGRESS_EVERY = 0.1


def progress_to(context: Context[Any, Any] | None) -> Progress | None:
    """MCP progress notifications for the call's client (sent only if it asked for them)."""
    if context is None:
        return None

    async def report(progress: float, message: str | None) -> None:
        await context.report_progress(progress, None, message)

    return RateLimited(report, MCP_PROGRESS_EVERY)


@contextlib.asynccontextmanager
async def on_stop_signal(stop: Callable[[], None]) -> AsyncIterator[None]:
    """Call ``stop`` on SIGTERM or SIGINT while inside. The handler stays installed until
    the very end, so a signal during shutdown cannot cut the warm pool's drain short."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                async for _ in signals:
                    stop()

            group.start_soon(watch)
            yield
            group.cancel_scope.cancel()


async def serve_stdio(app: App, tenant_id: str, agent: str | None = None) -> None:
    server = CloudSkillsServer(app, tenant_id, agent=agent)
    keep_start_up_from_the_collector()
    serving = anyio.CancelScope()
    async with on_stop_signal(serving.cancel), app.running():
        with serving:
            await run_stdio(server)
    # Shut down cleanly (the pool drained, every transaction committed): no more to wait for.
    app.close()
    exit_at_once()


def keep_start_up_from_the_collector() -> None:
    """Move what start-up built, which lives as long as the process (modules, the app, its
    skills: some 200 000 objects), out of reach of Python's cyclic collector (``gc.freeze``),
    so a full collection scans only what serving has made since. Without this, each full
    collection held the GIL for 100-150 ms on two cores, every minute or two of serving:
    the event loop and every model's decoding thread stood still, and the requests of that
    moment got their first token that much later."""
    gc.collect()
    gc.freeze()


class QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM once it
    stops, killing the process before the warm pool drains. We stop it instead (``stop``).

    It also wakes once a second, not ten times: uvicorn's loop polls whether to stop every
    100 ms, a third of what an idle server's event loop did, and every wake-up takes a core
    from a model decoding beside it. ``stop`` wakes it at once."""

    stopping: anyio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        if self.stopping is not None:
            self.stopping.set()

    async def main_loop(self) -> None:
        self.stopping = anyio.Event()
        seconds = 0
        # ``on_tick`` renews the Date header when its count is a multiple of ten (tenths of a
        # second in uvicorn's loop) and says whether to stop.
        while not await self.on_tick(seconds * 10):
            seconds = (seconds + 1) % 86_400
            with anyio.move_on_after(1):
                await self.stopping.wait()


def http_app(app: App, host: str, port: int) -> Starlette:
    """The HTTP server's ASGI app: MCP at /mcp, then /metrics and /console (runtime/web.py), and
    the OpenAI-compatible API at /v1 (runtime/openai_api.py)."""
    server = CloudSkillsServer(app, None, base_url=f"http://{host}:{port}")
    asgi = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    asgi.router.routes.extend(web_routes(app, f"http://{host}:{port}"))
    asgi.router.routes.extend(openai_routes(app))
    return asgi


def loop_options(event_loop: str) -> dict[str, Any]:
    """anyio's options for a server's event loop: uvloop's unless asyncio's is asked for
    (or uvloop is not installed). Each streamed piece of text wakes the loop and writes to
    a socket; uvloop does that, and the rest of a request, in less CPU (the loop's thread:
    22.8 ms a request against 26.9 at 4 streamed requests of 128 tokens, 2 cores), CPU
    that the model's threads lose on a small machine."""
    if event_loop != "uvloop":
        return {}
    try:
        import uvloop  # noqa: F401 - only whether it loads
    except ImportError:
        log.warning("uvloop does not load here: serving on asyncio's event loop")
        return {}
    return {"use_uvloop": True}


async def serve_http(app: App, host: str, port: int) -> None:
    logs.configure(app.settings.log_json)
    servers = [QuietUvicorn(uvicorn.Config(http_app(app, host, port), host=host, port=port, log_level="warning"))]
    if app.settings.metrics_address:  # /metrics without a key, on an address only the operator reaches
        metrics_host, metrics_port = split_address(app.settings.metrics_address)
        config = uvicorn.Config(metrics_app(app), host=metrics_host, port=metrics_port, log_level="warning")
        servers.append(QuietUvicorn(config))

    def stop() -> None:
        for web in servers:
            web.stop()

    keep_start_up_from_the_collector()
    async with on_stop_signal(stop), app.running(), anyio.create_task_group() as group:
        for web in servers:
            group.start_soon(web.serve)
