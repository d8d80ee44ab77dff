"""Exposed ports (issue 17) on real Docker sandboxes: a web server in a session sandbox
answers through the HTTP server's URL, and only to whoever holds its token or its owner's key."""

from __future__ import annotations

import anyio
import httpx
import pytest

from runtime.app import App
from runtime.server import http_app
from runtime.tenants import create_key, ensure_tenant
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SERVE = (
    "mkdir -p /work/site && echo hello-from-sandbox > /work/site/index.html && "
    "exec python3 -m http.server 8080 --bind 127.0.0.1 --directory /work/site"
)


async def test_an_exposed_port_answers_its_token_and_its_owner_only(app: App) -> None:
    web = httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app(app, "127.0.0.1", 8000)), base_url="http://t")
    ensure_tenant(app.store, "intruder")
    owner_key = create_key(app.store, app.settings.tenant).key
    intruder_key = create_key(app.store, "intruder").key
    async with mcp_client(app) as client, web:
        sid = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command=SERVE, background=True)
        exposed = await call(client, "sandbox_expose", sandbox_id=sid, port=8080)
        assert exposed["url"] == "http://127.0.0.1:8000" + exposed["path"]
        path = exposed["path"]

        with anyio.fail_after(30):
            while (await web.get(path + "index.html")).status_code != 200:  # noqa: ASYNC110 - a server starting
                await anyio.sleep(0.1)
        page = await web.get(path + "index.html")
        assert page.text == "hello-from-sandbox\n"
        listing = await web.get(path)
        assert listing.status_code == 200 and listing.text == page.text  # its directory index
        token = path.rstrip("/").rsplit("/", 1)[1]
        wrong = path.replace(token, "x" + token[1:])
        assert (await web.get(wrong + "index.html")).status_code == 404
        owner = exposed["owner_path"] + "index.html"
        assert (await web.get(owner, headers={"Authorization": f"Bearer {intruder_key}"})).status_code == 404
        assert (await web.get(owner)).status_code == 404
        assert (await web.get(owner, headers={"Authorization": f"Bearer {owner_key}"})).text == "hello-from-sandbox\n"
        # A port nothing listens on: a clear answer, not a hang.
        other = await call(client, "sandbox_expose", sandbox_id=sid, port=9)
        refused = await web.get(other["path"])
        assert refused.status_code == 502 and "port 9" in refused.text
        # Another tenant cannot expose it.
        async with mcp_client(app, tenant="intruder") as theirs:
            result = await theirs.call_tool("sandbox_expose", {"sandbox_id": sid, "port": 8080})
            assert result.is_error
        await call(client, "sandbox_destroy", sandbox_id=sid)
        assert (await web.get(path + "index.html")).status_code == 404
