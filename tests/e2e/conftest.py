"""The real server as a subprocess, reached the way agents reach it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.storage import open_store
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from scheduler.store import Store
from tests.loopback import free_port


def server_env(home: Path) -> dict[str, str]:
    return {
        "CLOUDSKILLS_HOME": str(home),
        "CLOUDSKILLS_POOL_SIZE": "2",
        "CLOUDSKILLS_AUTO_CONFIRM": "true",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
    }


def store_of(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'cloudskills.db'}")


def start_http_server(
    home: Path, extra_env: dict[str, str] | None = None, verbose: bool = False
) -> tuple[subprocess.Popen[str], str]:
    """`cloudskills serve --http` on a free loopback port, once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", *(["-v"] if verbose else []), "serve", "--http", "--port", str(port)],
        env={**server_env(home), **(extra_env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the HTTP server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/mcp"


def first_key(home: Path) -> str:
    """Set up a data dir's store with its default tenant, and return that tenant's key."""
    store = open_store(f"sqlite:///{home / 'cloudskills.db'}")
    try:
        new = bootstrap(store)
        assert new is not None
        return new.key
    finally:
        store.close()


@dataclass(frozen=True)
class Served:
    url: str
    home: Path
    key: str


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Served]:
    """A served data dir, with the key of its default tenant."""
    home = tmp_path / "home"
    home.mkdir()
    key = first_key(home)
    proc, url = start_http_server(home)
    yield Served(url, home, key)
    proc.terminate()
    proc.wait(timeout=20)
    assert proc.returncode == 0, "the server did not shut down cleanly on SIGTERM"
    store = store_of(home)
    left = DockerDriver().list_labelled({LABEL_STORE: store.store_id})
    store.close()
    assert not left, "the server left containers behind (its warm pool was not drained)"


def stop_replicas(processes: tuple[subprocess.Popen[str] | None, ...], store: Store, driver: DockerDriver) -> None:
    """End replica servers still running, remove any container of their store a failure left,
    and close the test's own handle on the store."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    for container in driver.list_labelled({LABEL_STORE: store.store_id}):
        driver.destroy(container.container_id)
    store.close()
