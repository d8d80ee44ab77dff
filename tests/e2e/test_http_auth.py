"""Over HTTP every request needs a live API key; a key only ever reaches its own tenant."""

from __future__ import annotations

import httpx2
import pytest

from runtime.storage import open_store
from runtime.tenants import create_key, create_tenant, list_keys, revoke_key
from sandbox.docker import DockerDriver
from tests.e2e.conftest import Served
from tests.mcp_helpers import call, call_error, http_client

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def post_initialize(url: str, key: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx2.AsyncClient() as raw:
        return await raw.post(url, json=INITIALIZE, headers=headers)


async def test_missing_wrong_and_revoked_keys_get_401(http_server: Served) -> None:
    store = open_store(f"sqlite:///{http_server.home / 'cloudskills.db'}")
    try:
        assert (await post_initialize(http_server.url, None)).status_code == 401
        assert (await post_initialize(http_server.url, "csk_not-a-real-key")).status_code == 401
        assert (await post_initialize(http_server.url, http_server.key)).status_code == 200
        for key in list_keys(store):
            revoke_key(store, key.id)
        refused = await post_initialize(http_server.url, http_server.key)
    finally:
        store.close()
    assert refused.status_code == 401
    assert "Bearer" in refused.headers.get("www-authenticate", "")


@pytest.mark.docker
async def test_a_tenant_cannot_see_or_touch_another_tenants_sandbox(
    http_server: Served, docker_driver: DockerDriver
) -> None:
    store = open_store(f"sqlite:///{http_server.home / 'cloudskills.db'}")
    try:
        create_tenant(store, "rival")
        rival_key = create_key(store, "rival").key
    finally:
        store.close()
    async with http_client(http_server.url, http_server.key) as owner, http_client(http_server.url, rival_key) as rival:
        sid = (await call(owner, "sandbox_create"))["sandbox_id"]
        refused = await call_error(rival, "sandbox_read_file", sandbox_id=sid, path="x")
        listed = await call(rival, "sandbox_list")
        rival_usage = await call(rival, "billing_usage")
        await call(owner, "sandbox_destroy", sandbox_id=sid)
    assert refused == f"no sandbox {sid!r}: call sandbox_list to see yours, or sandbox_create."
    assert listed["sandboxes"] == []
    assert rival_usage["rows"] == [] or all(r["cost"]["micros"] == 0 for r in rival_usage["rows"])
