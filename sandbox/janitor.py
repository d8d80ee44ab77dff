"""Removes the sandboxes a stopping server could not wait for.

A stdio server stops within a second of its client closing stdin, so it cannot wait
for a warm sandbox the engine is still making (a create under load can take seconds).
The engine finishes what it was asked, and the container then stands there, created
or ended, with no server left to remove it. So the server leaves their labels to a
process of its own that outlives it, this one: it removes each such container as soon
as the engine shows it, and gives up on one the engine never made after ``--within``
seconds.

    python -m sandbox.janitor [--docker-url URL] [--within S] LABEL=VALUE [LABEL=VALUE ...]

Each LABEL=VALUE names one container (e.g. ``cloudskills.sandbox=sb_...``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import docker
import docker.errors
import requests.exceptions

LOOK_EVERY_S = 0.5
WITHIN_S = 60.0


def leave_to_janitor(base_url: str | None, labels: Sequence[str], within_s: float = WITHIN_S) -> None:
    """Start a janitor for these containers (``label=value`` each), detached from this process."""
    if not labels:
        return
    command = [sys.executable, "-m", "sandbox.janitor", "--within", f"{within_s:g}", *labels]
    if base_url:
        command[3:3] = ["--docker-url", base_url]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.Popen(
        command,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives the server, and its client's signals
    )


def sweep(api: docker.APIClient, labels: list[str], within_s: float) -> list[str]:
    """Remove the container of each label as the engine shows it; the labels never seen."""
    pending = set(labels)
    deadline = time.monotonic() + within_s
    while pending and time.monotonic() < deadline:
        for label in sorted(pending):
            try:
                for container in api.containers(all=True, filters={"label": label}):
                    api.remove_container(container["Id"], force=True)
                    pending.discard(label)
            except docker.errors.NotFound:
                pending.discard(label)  # removed meanwhile
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                pass  # the engine is busy or restarting: look again
        if pending:
            time.sleep(LOOK_EVERY_S)
    return sorted(pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docker-url", default=None)
    parser.add_argument("--within", type=float, default=WITHIN_S)
    parser.add_argument("labels", nargs="+")
    args = parser.parse_args()
    api = docker.APIClient(base_url=args.docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock")
    sweep(api, args.labels, args.within)


if __name__ == "__main__":
    main()
