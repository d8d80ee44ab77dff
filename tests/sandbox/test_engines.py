"""Sandboxes across two Docker Engines (issue 20): a second real engine runs on this machine
(its own socket, data root, exec root, no bridge), the server places sandboxes by free capacity
and reaches each on its engine, copies the image to the new engine on first use, passes over an
engine that stops answering (killed mid-run), marks its sandboxes lost at the last moment it
answered, reaps what it left once it is back, and places nothing on an engine being drained."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.server import http_app
from runtime.settings import Settings
from sandbox import engines
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from skills.sandbox.rows import Sandbox
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until
from tests.skills.test_sandbox_network import SERVE

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@contextlib.contextmanager
def second_engine(root: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A second dockerd beside the first: its own socket, data root, exec root and no bridge."""
    root.mkdir(parents=True, exist_ok=True)
    socket_url = f"unix://{root}/docker.sock"
    process = start_dockerd(root)
    try:
        yield socket_url, process
    finally:
        stop_dockerd(root)


def bridge_of(root: Path) -> str:
    return f"csbr{os.getpid() % 100000}"


def start_dockerd(root: Path) -> subprocess.Popen[bytes]:
    # A bridge of its own: with --bridge=none a dockerd deletes docker0 at start, the first
    # engine's bridge (seen: the first engine's databases then fail to start).
    bridge = bridge_of(root)
    if not Path(f"/sys/class/net/{bridge}").exists():
        subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", "172.31.254.1/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    command = [
        "dockerd", f"--host=unix://{root}/docker.sock", f"--data-root={root}/data", f"--exec-root={root}/exec",
        f"--pidfile={root}/docker.pid", f"--bridge={bridge}", "--iptables=false", "--ip-masq=false",
    ]  # fmt: skip
    # Its containerd may fail to come up in time on a loaded machine: clear what it left, try again.
    for _ in range(3):
        log = (root / "dockerd.log").open("ab")
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        if answers(root, process):
            return process
        kill_everything_of(root)
    raise AssertionError(f"the second dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")


def answers(root: Path, process: subprocess.Popen[bytes]) -> bool:
    driver = DockerDriver(f"unix://{root}/docker.sock")
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            driver.version()
            return True
        time.sleep(0.2)
    return False


def kill_everything_of(root: Path) -> None:
    """Its dockerd, containerd and shims (their command lines name its directories)."""
    subprocess.run(["pkill", "-KILL", "-f", str(root)], check=False)
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", str(root)], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for leftover in ("docker.pid", "exec/containerd/containerd.pid", "docker.sock"):
        (root / leftover).unlink(missing_ok=True)


def stop_dockerd(root: Path) -> None:
    """Stop it, its containerd and what they ran, and lift their mounts."""
    subprocess.run(["pkill", "-TERM", "-f", f"--exec-root={root}/exec"], check=False)
    kill_everything_of(root)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["ip", "link", "del", bridge_of(root)], check=False, capture_output=True)


def first_bridge_up() -> bool:
    return Path("/sys/class/net/docker0").exists()


def kill_dockerd(root: Path, process: subprocess.Popen[bytes]) -> None:
    """Kill the engine at once (dockerd, its containerd, the containers' shims), as a crashed
    machine would go: nothing of it answers."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    kill_everything_of(root)


async def engine_of(client: object, sandbox_id: str) -> str:
    return str((await call(client, "sandbox_describe", sandbox_id=sandbox_id))["engine"])  # type: ignore[arg-type]


async def test_sandboxes_spread_over_two_engines_and_survive_one_going_away(
    settings: Settings, docker_driver: DockerDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "LOST_AFTER_S", 1.0)
    root = Path("/tmp") / f"cs-engine-{os.getpid()}"
    with second_engine(root) as (second_url, second_process):
        assert first_bridge_up(), "the first engine's bridge is gone"
        hosts = [
            {"name": "one", "url": "unix:///var/run/docker.sock", "capacity": 2},
            {"name": "two", "url": second_url, "capacity": 3},
        ]
        settings = settings.model_copy(update={"docker_hosts": hosts, "pool_size": 0})
        app = App(settings)
        async with app.running(), mcp_client(app) as client:
            first = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
            second = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
            assert [await engine_of(client, first), await engine_of(client, second)] == ["two", "one"]
            for sid in (first, second):  # each reached on its own engine (the image copied to two)
                out = await call(client, "sandbox_run_code", sandbox_id=sid, code="print(6 * 7)")
                assert out["stdout"] == "42\n"
            assert (await call(client, "sandbox_run", code="print(1)"))["stdout"] == "1\n"
            # A port of a sandbox on two is exposed through its own engine.
            await call(client, "sandbox_exec", sandbox_id=first, command=SERVE, background=True)
            path = (await call(client, "sandbox_expose", sandbox_id=first, port=8080))["path"]
            web = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=http_app(app, "127.0.0.1", 8000)), base_url="http://t"
            )
            async with web:
                with anyio.fail_after(30):
                    while (page := await web.get(path + "index.html")).status_code != 200:  # noqa: ASYNC110
                        await anyio.sleep(0.1)
            assert page.text == "hello-from-sandbox\n"

            killed_at = time.time()
            kill_dockerd(root, second_process)
            # Placement passes over the engine that does not answer, at once.
            third = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
            assert await engine_of(client, third) == "one"
            # Its sandbox is lost, billed to the last moment its engine answered.
            await until(lambda: state_of(app, first) == "failed", "the lost sandbox marked", timeout_s=60)
            lost = row_of(app, first)
            assert "engine two stopped answering" in (lost.destroy_reason or ""), lost.destroy_reason
            assert lost.destroyed_at is not None and lost.destroyed_at.timestamp() <= killed_at + 1
            message = await call_error(client, "sandbox_run_code", sandbox_id=first, code="print(1)")
            assert "engine two stopped answering" in message, message
            # one is full now (2 of 2): with two down there is no room, and the error says so.
            full = await call_error(client, "sandbox_create", template="python")
            assert "no Docker engine can take a sandbox now" in full, full

            # Back: what it left (the lost sandbox's container) is reaped.
            start_dockerd(root)
            back = DockerDriver(second_url)
            labels = {LABEL_STORE: app.store.store_id}
            await until(lambda: not back.list_labelled(labels), "engine two's strays reaped", timeout_s=90)
            # Drained: one takes nothing new; two, back and with room, does.
            app.engines.engines["one"].draining = True  # type: ignore[union-attr]
            fourth = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
            assert await engine_of(client, fourth) == "two"
            for sid in (second, third, fourth):
                await call(client, "sandbox_destroy", sandbox_id=sid)
        for driver in (docker_driver, back):  # nothing of this store is left on either engine
            assert not driver.list_labelled(labels)
        assert first_bridge_up(), "the second engine took the first engine's bridge"
        app.close()


def row_of(app: App, sandbox_id: str) -> Sandbox:
    with app.store.transaction() as session:
        row = session.scalar(select(Sandbox).where(Sandbox.id == sandbox_id))
        assert row is not None
        session.expunge(row)
        return row


def state_of(app: App, sandbox_id: str) -> str:
    return row_of(app, sandbox_id).state
