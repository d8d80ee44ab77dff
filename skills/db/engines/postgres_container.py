"""The container side of a PostgreSQL instance: its name, its port, what goes into it,
and what its log tells of a server process the kernel killed."""

from __future__ import annotations

import socket
import tarfile
import time

import docker
import docker.errors
import requests.exceptions

from skills.db.engines.base import Instance

# How long a lost connection waits for the server's log to tell why.
LOST_LOG_WAIT_S = 3.0


def container_name(instance: Instance) -> str:
    return f"cloudskills-{instance.id}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Docker unpacks it as root; the volume's directory (0700, postgres) keeps it private.
    info.mode = 0o644
    return info


def killed_for_memory(client: docker.DockerClient, instance: Instance, since: float) -> bool:
    """Whether the server's log tells, since ``since``, of a process killed by SIGKILL: in a
    container with a memory limit, that is the kernel's OOM killer."""
    deadline = time.monotonic() + LOST_LOG_WAIT_S
    while True:
        try:
            container = client.containers.get(container_name(instance))
            log = bytes(container.logs(since=int(since) - 1)).decode(errors="replace")
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        if "terminated by signal 9" in log:
            return True
        # The postmaster logs the death a moment after the client sees its connection close.
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
