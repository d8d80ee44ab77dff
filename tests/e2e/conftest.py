"""The real server as a subprocess, reached the way agents reach it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.store import Store


def server_env(home: Path) -> dict[str, str]:
    return {"CLOUDSKILLS_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def store_of(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'cloudskills.db'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_http_server(home: Path) -> tuple[subprocess.Popen[str], str]:
    """`cloudskills serve --http` on a free loopback port, once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--http", "--port", str(port)],
        env=server_env(home),
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


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A served data dir: yields the server's URL and the dir."""
    home = tmp_path / "home"
    proc, url = start_http_server(home)
    yield url, home
    proc.terminate()
    proc.wait(timeout=20)
