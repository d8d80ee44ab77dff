"""What a running sandbox uses now: CPU, memory (now and peak), disk, processes.

The engine's one-shot stats (its cgroup's counters, no second sample waited
for) give CPU time and memory; a ``docker exec`` of a few lines of Python
inside gives what only the sandbox sees: its disk's use and its processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import docker
import docker.errors
import requests.exceptions

from common.errors import BackendUnavailable, NotFound

PROBE = r"""
import json, os
disk = os.statvfs("/work")
processes = []
for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        continue
    command = b" ".join(a for a in argv if a).decode(errors="replace")
    if command and "cloudskills-probe" not in command:
        processes.append({"pid": int(pid), "command": command[:200]})
print(json.dumps({"disk_used": (disk.f_blocks - disk.f_bfree) * disk.f_frsize,
                  "disk_total": disk.f_blocks * disk.f_frsize, "processes": processes}))
"""


@dataclass(frozen=True)
class ProcessEntry:
    pid: int
    command: str


@dataclass(frozen=True)
class SandboxStats:
    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int | None  # None where the engine's cgroups do not keep it (v2)
    disk_used_bytes: int
    processes: tuple[ProcessEntry, ...]


def memory_now(memory: dict[str, Any]) -> int:
    """Memory in use as `docker stats` counts it: less the page cache it could drop."""
    stats = memory.get("stats") or {}
    cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return max(int(memory.get("usage") or 0) - int(cache or 0), 0)


def sandbox_stats(api: docker.APIClient, container_id: str) -> SandboxStats:
    """One reading of a running sandbox (blocking)."""
    try:
        raw = cast(dict[str, Any], api.stats(container_id, stream=False, one_shot=True))
        exec_id = api.exec_create(
            container_id, ["python3", "-c", PROBE, "cloudskills-probe"], user="1000:1000", workdir="/"
        )["Id"]
        output = api.exec_start(exec_id)
    except docker.errors.NotFound as exc:
        raise NotFound("this sandbox no longer exists: create a new one.") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise NotFound("this sandbox is not running: create a new one.") from exc
        raise BackendUnavailable(f"Docker could not read the sandbox's usage: {exc.explanation}.") from exc
    except requests.exceptions.RequestException as exc:
        raise BackendUnavailable(f"the Docker Engine is not reachable ({type(exc).__name__}): try again.") from exc
    try:
        inside = json.loads(bytes(output).decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        inside = {"disk_used": 0, "processes": []}
    memory = raw.get("memory_stats") or {}
    peak = memory.get("max_usage")
    return SandboxStats(
        cpu_seconds=int(((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0) / 1e9,
        memory_bytes=memory_now(memory),
        memory_peak_bytes=int(peak) if peak else None,
        disk_used_bytes=int(inside.get("disk_used") or 0),
        processes=tuple(ProcessEntry(int(p["pid"]), str(p["command"])) for p in inside.get("processes") or []),
    )
