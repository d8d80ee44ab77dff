"""What a sandbox does when no server is left: the real `cloudskills serve` over stdio, one
per agent session as harnesses run it. A session sandbox ends at its ttl_s with no server
alive, and a server started later bills it to that moment; a killed server's warm pool ends
by itself within seconds; a server exits within a second of its stdin closing."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import docker.errors
import pytest
from mcp import Client, StdioServerParameters

from runtime.app import App
from runtime.settings import load_settings
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_POOL, LABEL_STORE
from sandbox.exits import EXIT_IDLE, EXIT_RELEASED, docker_time
from scheduler.models import Lease
from skills.sandbox.manager import SandboxManager
from skills.sandbox.rows import Sandbox
from tests.e2e.conftest import first_key, server_env, store_of
from tests.mcp_helpers import call
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def stdio_server(home: Path, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "runtime", "serve"], env={**server_env(home), **env}
    )


def start_raw(home: Path, **env: str) -> subprocess.Popen[bytes]:
    """The stdio server as a bare process: its warm pool starts at once, no client needed."""
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**server_env(home), **env},
    )


def pool_states(driver: DockerDriver, store_id: str) -> dict[str, bool]:
    """The store's warm-pool containers: id -> running."""
    found = driver.list_labelled({LABEL_STORE: store_id, LABEL_POOL: "1"})
    return {c.container_id: c.running for c in found}


async def later_server(home: Path, monkeypatch: pytest.MonkeyPatch, docker_driver: DockerDriver) -> App:
    monkeypatch.setenv("CLOUDSKILLS_HOME", str(home))
    return App(load_settings(reap_interval_s=0.2, pool_size=0), docker_driver)


async def test_a_sandbox_expires_with_no_server_and_a_later_server_bills_it_to_that_moment(
    tmp_path: Path, docker_driver: DockerDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    first_key(home)
    async with Client(stdio_server(home)) as client:
        sid = (await call(client, "sandbox_create", template="python", ttl_s=10))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command="echo used")
    # The client is gone, and so is its server: nothing but the sandbox itself keeps time now.
    store = store_of(home)
    with store.transaction() as session:
        row = session.get(Sandbox, sid)
        assert row is not None and row.state == "running" and row.container_id
        container_id, created_at = row.container_id, row.created_at
    store.close()
    await until(lambda: docker_driver.exit_of(container_id) is not None, "the sandbox to end by itself", 30)
    state = docker_driver.client.api.inspect_container(container_id)["State"]
    ended_at = docker_time(state["FinishedAt"])
    assert state["ExitCode"] == EXIT_IDLE
    assert 10 <= (ended_at - created_at).total_seconds() < 15, "idle 10 s after its last call, then it ended"

    app = await later_server(home, monkeypatch, docker_driver)
    try:
        async with app.running():
            reconciled = lambda: app.service(SandboxManager).row(sid).state == "destroyed"  # noqa: E731
            await until(reconciled, "the later server to reconcile it")
        with app.store.transaction() as session:
            row = session.get(Sandbox, sid)
            lease = session.get(Lease, sid)
            assert row is not None and lease is not None
            assert row.destroy_reason == "idle_ttl" and row.destroyed_at == ended_at
            assert lease.ended_at == lease.billed_until and abs((lease.billed_until - ended_at).total_seconds()) < 0.002
        assert docker_driver.list_labelled({LABEL_STORE: app.store.store_id}) == []
    finally:
        app.close()


async def test_a_killed_servers_warm_pool_ends_by_itself_within_seconds_and_any_server_removes_it(
    tmp_path: Path, docker_driver: DockerDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    first_key(home)
    store_id = store_of(home).store_id
    proc = start_raw(home)
    try:
        await until(lambda: sum(pool_states(docker_driver, store_id).values()) == 2, "a full warm pool", 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    await until(lambda: not any(pool_states(docker_driver, store_id).values()), "the warm pool to end", 15)
    ended_in = time.monotonic() - killed
    codes = set()
    for container_id in pool_states(docker_driver, store_id):
        with contextlib.suppress(docker.errors.NotFound):  # another store's server may sweep it first
            codes.add(docker_driver.client.api.inspect_container(container_id)["State"]["ExitCode"])
    assert codes <= {EXIT_RELEASED} and ended_in < 5, (codes, ended_in)
    # Nothing refers to them: the next server on any data dir removes them.
    other = await later_server(tmp_path / "another", monkeypatch, docker_driver)
    try:
        async with other.running():
            await until(lambda: pool_states(docker_driver, store_id) == {}, "another server to sweep them")
    finally:
        other.close()


async def test_the_server_exits_within_a_second_of_stdin_closing_and_leaves_nothing(
    tmp_path: Path, docker_driver: DockerDriver
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    first_key(home)
    store_id = store_of(home).store_id
    proc = start_raw(home, CLOUDSKILLS_POOL_SIZE="8")
    try:
        await until(lambda: sum(pool_states(docker_driver, store_id).values()) == 8, "a full warm pool", 120)
        await anyio.sleep(0.5)  # a quiet moment, as between an agent's sessions
        assert proc.stdin is not None
        begun = time.monotonic()
        proc.stdin.close()
        with anyio.fail_after(10):
            while proc.poll() is None:  # noqa: ASYNC110 - a process's exit has no event to wait on here
                await anyio.sleep(0.01)
        took = time.monotonic() - begun
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert took < 1.0, f"the server took {took:.2f} s to exit"
    # The removals it began complete in the engine, with no server left.
    await until(lambda: docker_driver.list_labelled({LABEL_STORE: store_id}) == [], "its warm pool to be gone", 15)
