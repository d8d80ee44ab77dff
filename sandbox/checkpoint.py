"""Whether this engine can checkpoint a sandbox (pause it to disk) and restore it, and why not.

Measured on this project's machines (Debian 12, kernel 6.18, Docker Engine
20.10 from Debian, gVisor release 20221219; README "Pause and resume"):

- runc checkpoints with CRIU. Debian 12's CRIU 3.17.1 cannot run on this
  kernel: ``criu check`` fails at ``vdso: Unexpected rt vDSO area bounds``.
- gVisor checkpoints by itself, and on this kernel ``runsc checkpoint`` and
  ``runsc restore`` of a container run by runsc alone work (about 0.6 s and
  0.7 s at 64 MiB of live data, 2.5 s and 0.9 s at 512 MiB); its
  ``--leave-running`` fails to restore. Docker reaches either only through its
  checkpoint API, which needs the daemon's experimental mode, off here; turning
  it on restarts the daemon, and with it every running sandbox.

So the check says why a sandbox cannot pause, in words an agent can act on.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import docker
import docker.errors
import requests.exceptions


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


def pause_problem(api: docker.APIClient, runtime: str | None, local: bool) -> str:
    """Why a sandbox on this runtime cannot be paused to disk here."""
    try:
        experimental = bool(api.info().get("ExperimentalBuild"))
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        experimental = False
    reasons = []
    if runtime == "runsc":
        reasons.append("gVisor can checkpoint on this kernel, but only outside Docker")
    elif local:
        reasons.append(criu_problem() or "CRIU passes its checks, but pausing through it is not built yet")
    else:
        reasons.append("runc checkpoints with CRIU on the engine's machine, which this server cannot check")
    if not experimental:
        reasons.append("and this Docker Engine runs without experimental mode, which its checkpoint API needs")
    return ", ".join(reasons)
