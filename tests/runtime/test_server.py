"""The MCP surface, through the SDK's in-memory client (no Docker needed to list), and the HTTP
server's own loop."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from runtime.app import App
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from tests.loopback import serving
from tests.mcp_helpers import call, mcp_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def offline_app(settings: Settings) -> App:
    # Listing needs no engine; the driver connects on first use only.
    return App(settings, DockerDriver("unix:///nonexistent/docker.sock"))


async def test_every_op_is_a_tool_with_schemas_and_honest_annotations(offline_app: App) -> None:
    async with mcp_client(offline_app) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"sandbox_run", "sandbox_create", "sandbox_destroy", "billing_usage"} <= set(tools)
    for name, tool in tools.items():
        assert name.replace("_", "").isalnum()
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.input_schema["type"] == "object"
        assert tool.description
    annotations = {name: tool.annotations for name, tool in tools.items() if tool.annotations is not None}
    assert annotations["sandbox_destroy"].destructive_hint is True
    assert annotations["sandbox_destroy"].idempotent_hint is True
    assert annotations["sandbox_read_file"].read_only_hint is True
    assert annotations["sandbox_run"].read_only_hint is False
    assert tools["sandbox_run"].input_schema.get("required", []) == []  # `{}`-style defaults
    assert tools["sandbox_create"].input_schema.get("required", []) == []


async def test_skill_guides_are_resources(offline_app: App) -> None:
    async with mcp_client(offline_app) as client:
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        guide = await client.read_resource("skill://sandbox/SKILL.md")
    assert {"skill://sandbox/SKILL.md", "skill://billing/SKILL.md"} <= resources
    assert "sandbox_run" in guide.contents[0].text  # type: ignore[union-attr]


async def test_no_docker_gives_a_clear_error_and_no_charge(offline_app: App) -> None:
    async with offline_app.running(serving=False), mcp_client(offline_app) as client:
        result = await client.call_tool("sandbox_run", {"code": "print(1)"})
        usage = await call(client, "billing_usage")
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Docker Engine is not reachable" in text and "ensure-docker" in text
    assert usage["total"]["micros"] == 0


def test_start_up_is_kept_from_the_collector(offline_app: App) -> None:
    """What start-up built is frozen: a full collection while serving scans only what came
    after (``gc.get_objects`` lists what the collector scans)."""
    import gc

    from runtime.server import http_app, keep_start_up_from_the_collector

    web = http_app(offline_app, "127.0.0.1", 8000)
    before = len(gc.get_objects())
    try:
        keep_start_up_from_the_collector()
        assert gc.get_freeze_count() > before // 2
        assert len(gc.get_objects()) < before // 20
        assert all(obj is not web for obj in gc.get_objects()), "the app is among what was frozen"
    finally:
        gc.unfreeze()


async def test_the_http_server_serves_with_a_date_and_stops_when_told() -> None:
    """QuietUvicorn's own loop (a tick a second, not uvicorn's ten): responses carry a Date
    header, and ``stop`` ends the server without waiting for a signal."""

    async def hello(_request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    with anyio.fail_after(30):  # leaving ``serving`` stops the server and waits until it has
        async with serving(Starlette(routes=[Route("/", hello)])) as url, httpx2.AsyncClient() as client:
            response = await client.get(f"{url}/")
            assert response.text == "hi" and response.headers["date"].endswith("GMT")
