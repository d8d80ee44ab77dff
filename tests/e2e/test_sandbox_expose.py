"""An exposed port through a real `cloudskills serve --http` (issue 17): the URL sandbox_expose
returns answers from the sandbox's web server, and stops once the sandbox is destroyed."""

from __future__ import annotations

import anyio
import httpx2
import pytest

from tests.e2e.conftest import Served
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SERVE = (
    "mkdir -p /work/site && echo served > /work/site/index.html && "
    "exec python3 -m http.server 8080 --bind 127.0.0.1 --directory /work/site"
)


async def test_the_url_of_an_exposed_port_answers_over_the_real_server(http_server: Served) -> None:
    async with http_client(http_server.url, http_server.key) as client, httpx2.AsyncClient(timeout=30) as web:
        sid = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command=SERVE, background=True)
        url = (await call(client, "sandbox_expose", sandbox_id=sid, port=8080))["url"]
        assert url.startswith(http_server.url.removesuffix("/mcp") + f"/sandboxes/{sid}/ports/8080/")
        with anyio.fail_after(30):
            while (page := await web.get(url)).status_code != 200:  # noqa: ASYNC110 - a server starting
                await anyio.sleep(0.1)
        assert page.text == "served\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)
        assert (await web.get(url)).status_code == 404
