"""Channels survive `kill -9` of the server: messages waiting and in flight, their receipts
and dedupe keys, over Streamable HTTP, from one server process to the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import first_key, start_http_server
from tests.mcp_helpers import call, http_client

pytestmark = pytest.mark.anyio
NO_POOL = {"CLOUDSKILLS_POOL_SIZE": "0"}


async def test_messages_and_leases_survive_kill_9(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    proc, url = start_http_server(home, NO_POOL)
    try:
        async with http_client(url, key) as client:
            sent = [
                (await call(client, "channel_send", channel="jobs", body={"job": n}))["message_id"] for n in range(3)
            ]
            await call(client, "channel_send", channel="jobs", body="once", dedupe_key="once")
            held = (await call(client, "channel_receive", channel="jobs", lease_s=600))["messages"][0]
        proc.kill()
        proc.wait(timeout=10)

        proc, url = start_http_server(home, NO_POOL)
        async with http_client(url, key) as client:
            described = await call(client, "channel_describe", channel="jobs")
            assert (described["depth"], described["in_flight"]) == (3, 1)
            assert (await call(client, "channel_send", channel="jobs", body="once", dedupe_key="once"))["duplicate"]
            rest = await call(client, "channel_receive", channel="jobs", max_messages=10)
            assert [m["message_id"] for m in rest["messages"]][:2] == sent[1:]
            assert [m["body"] for m in rest["messages"]][2] == "once"
            acked = await call(client, "channel_ack", channel="jobs", receipts=[held["receipt"]])
            assert acked["acked"] == 1 and held["message_id"] == sent[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
