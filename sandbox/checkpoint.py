"""Pausing a sandbox to disk (a checkpoint of its processes and memory) and restoring it.

Measured on this project's machines (Debian 12, kernel 6.18, Docker Engine
20.10 from Debian, gVisor release 20221219; README "Pause and resume"):

- runc checkpoints with CRIU. Debian 12's CRIU 3.17.1 cannot run on this
  kernel: ``criu check`` fails at ``vdso: Unexpected rt vDSO area bounds``.
- gVisor checkpoints by itself, and Docker's checkpoint API reaches it: a
  checkpoint stops the container (its memory goes to a file), and a start from
  the checkpoint brings back every process, with its memory and open files. The
  API needs the daemon's experimental mode (``scripts/ensure-docker`` turns it
  on when it starts the engine).

So a sandbox pauses where its runtime is gVisor and the engine is
experimental; anywhere else ``pause_problem`` says why not, in words an agent
can act on. A paused container is an exited one holding its checkpoint (under
the engine's own directory for the container: removing the container removes
it) and, on this machine, its kept disk (``sandbox/disks.py``).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from common.errors import BackendUnavailable
from common.processes import pid_alive

# One checkpoint per container at a time, under this name.
CHECKPOINT = "paused"


@functools.cache
def criu_problem() -> str | None:
    """Why CRIU cannot checkpoint here (None: ``criu check`` passes)."""
    criu = shutil.which("criu")
    if criu is None:
        return "runc checkpoints with CRIU, which is not installed on the engine's machine"
    try:
        done = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"runc checkpoints with CRIU, and `criu check` could not run ({exc})"
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    first = lines[0] if lines else f"exit {done.returncode}"
    return f"runc checkpoints with CRIU, and `criu check` fails on this kernel ({first.strip()[:160]})"


def experimental(api: docker.APIClient) -> bool:
    try:
        return bool(api.info().get("ExperimentalBuild"))
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False


def pause_problem(api: docker.APIClient, runtime: str | None, local: bool) -> str | None:
    """Why a sandbox on this runtime cannot be paused to disk here; None when it can."""
    if runtime == "runsc":
        if experimental(api):
            return None
        return (
            "gVisor can checkpoint, but this Docker Engine runs without experimental mode, which its "
            'checkpoint API needs (an operator sets "experimental": true in /etc/docker/daemon.json)'
        )
    if local:
        why = criu_problem() or "CRIU passes its checks, but pausing runc sandboxes through it is not built"
    else:
        why = "runc checkpoints with CRIU on the engine's machine, which this server cannot check"
    return f"{why}; sandboxes of a gVisor template (python-gvisor, bash-gvisor) can be paused"


def _raw(api: docker.APIClient) -> Any:
    return api


def _detail(exc: Exception) -> str:
    """The engine's own words for a failed call."""
    return str(exc.explanation if isinstance(exc, docker.errors.APIError) else exc)


def _refused(action: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"the engine could not {action} the sandbox ({_detail(exc)[:300]})")


def checkpoint(api: docker.APIClient, container_id: str) -> int:
    """Checkpoint a running container and stop it; the checkpoint's size in bytes where
    the engine is on this machine (0: unknown)."""
    forget(api, container_id)  # one a failed restore left behind
    try:
        engine = _raw(api)  # the SDK has no checkpoint calls: its own request helpers
        url = engine._url("/containers/{0}/checkpoints", container_id)
        engine._raise_for_status(engine._post_json(url, data={"CheckpointID": CHECKPOINT, "Exit": True}))
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _refused("checkpoint", exc) from exc
    return checkpoint_bytes(api, container_id)


def checkpoint_bytes(api: docker.APIClient, container_id: str) -> int:
    try:
        root = Path(str(api.info()["DockerRootDir"]))
    except (docker.errors.DockerException, requests.exceptions.RequestException, KeyError):
        return 0
    directory = root / "containers" / container_id / "checkpoints" / CHECKPOINT
    with contextlib.suppress(OSError):
        return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    return 0


# Where Docker 20.10's containerd shim keeps runsc's state of each container.
RUNSC_STATE_GLOB = "/var/run/docker/runtime-*/moby/{id}_sandbox:{id}.*"


def clear_stale_runsc_state(container_id: str) -> bool:
    """Remove the state runsc left behind for a container it no longer runs.

    gVisor 20221219 has a flaw: checkpointing a container that was itself
    restored leaves its state file behind ("paused", though every process has
    exited, and ``runsc delete`` panics on it), so the next restore fails with "id
    already in use". The state is stale when its sandbox process is gone; then
    it is removed, which is what ``runsc delete`` would have done. Only on the
    engine's own machine (a remote engine's files are out of reach)."""
    removed = False
    for path in map(Path, sorted(glob.glob(RUNSC_STATE_GLOB.format(id=container_id)))):
        if path.suffix == ".state" and _alive(path):
            return False
    for path in map(Path, sorted(glob.glob(RUNSC_STATE_GLOB.format(id=container_id)))):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed = True
    return removed


def _alive(state_file: Path) -> bool:
    try:
        state = json.loads(state_file.read_text())
        pid = int((state.get("sandbox") or {}).get("pid") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return pid_alive(pid)


# The engine's upload of a checkpoint to containerd sometimes fails when containerd
# already holds a blob of the same content (moby/moby#42900, fixed only in Docker 26):
# nothing was started, and the same start again succeeds.
UPLOAD_RACE = "already exists"
RESTORE_ATTEMPTS = 3


def restore(api: docker.APIClient, container_id: str) -> None:
    """Start a container from its checkpoint, then let the checkpoint go."""
    engine = _raw(api)
    url = engine._url("/containers/{0}/start", container_id)
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        clear_stale_runsc_state(container_id)
        try:
            engine._raise_for_status(engine._post(url, params={"checkpoint": CHECKPOINT}))
            break
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            detail = _detail(exc)
            if UPLOAD_RACE in detail and "checkpoint" in detail and attempt < RESTORE_ATTEMPTS:
                continue
            raise _refused("restore", exc) from exc
    forget(api, container_id)


def forget(api: docker.APIClient, container_id: str) -> None:
    """Delete the container's checkpoint; none is fine."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        engine = _raw(api)
        engine._raise_for_status(
            engine._delete(engine._url("/containers/{0}/checkpoints/{1}", container_id, CHECKPOINT))
        )
