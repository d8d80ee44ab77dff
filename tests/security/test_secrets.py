"""API keys are stored hashed and never logged; a sandbox never sees the host's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.docker import DockerDriver
from tests.e2e.conftest import first_key, start_http_server
from tests.e2e.test_http_auth import post_initialize
from tests.mcp_helpers import call, http_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

HOST_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "host-aws-secret-0123456789",
    "CLOUDSKILLS_DATABASE_URL_PASSWORD": "host-db-password-9876543210",
}


async def test_keys_are_hashed_unlogged_and_host_env_stays_home(tmp_path: Path, docker_driver: DockerDriver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    proc, url = start_http_server(home, extra_env=HOST_SECRETS, verbose=True)
    try:
        async with http_client(url, key) as client:
            seen = await call(client, "sandbox_run", command="env; cat /proc/self/environ; cat /proc/1/environ")
        assert (await post_initialize(url, key + "tampered")).status_code == 401
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    leaked = seen["stdout"] + seen["stderr"]
    for value in [*HOST_SECRETS.values(), key]:
        assert value not in leaked, "the sandbox saw a host secret"
        assert value not in log, "a secret reached the server's log"
    database = b"".join(p.read_bytes() for p in home.glob("cloudskills.db*"))
    assert key.encode() not in database, "the key is stored in clear"
    assert key.split("_", 1)[1][:12].encode() not in database
