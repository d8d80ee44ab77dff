"""What a sandbox's container is made of: its lockdown, its limits, and how it sees them.

Every container is locked down: no network, a non-root user, a read-only
root, all capabilities dropped, no-new-privileges, private IPC, an init
process, and pids, memory and CPU limits; the engine keeps no log of what it
prints (file contents and outputs pass there). Its limits show inside as
agents and build tools read them:

- CPUs: a cpuset of as many CPUs as its vCPUs, rounded up (``nproc`` and
  ``os.sched_getaffinity`` read it; the CFS quota still caps the time), the
  CPUs taken in turn so sandboxes spread over the machine;
- memory: Debian's lxcfs, where it runs, serves a /proc/meminfo (and cpuinfo,
  stat, uptime...) of the container's own cgroup, bound over the host's;
  gVisor shows its own limit without it.
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path
from typing import Any

import docker.types

from sandbox.driver import SandboxSpec

WORK_DIR = "/work"
LXCFS_ROOT = Path("/var/lib/lxcfs")
LXCFS_FILES = (
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "sys/devices/system/cpu/online",
)
# gVisor's own host threads count against the container's pids cgroup (about a
# dozen per sandboxed process on its ptrace platform, more while forks are
# refused: measured 837 for 64 processes), so a runsc container whose host
# limit equals its own dies (exit 2) once it is busy. It gets a host limit this
# many times its own plus a base, a bound for the host only, and gVisor keeps
# the sandbox's own limit as RLIMIT_NPROC, which its kernel enforces per sandbox
# (under runc that limit would count every sandbox's processes together).
GVISOR_HOST_PIDS_PER_PROCESS = 16
GVISOR_HOST_PIDS_BASE = 256


class CpuPlacement:
    """Hands out cpusets in turn, so one-vCPU sandboxes spread over the machine's CPUs."""

    def __init__(self) -> None:
        self._next = itertools.count()
        self._lock = threading.Lock()

    def cpuset(self, vcpus: float, host_cpus: int) -> str | None:
        count = min(math.ceil(vcpus), host_cpus)
        if count <= 0 or count >= host_cpus:
            return None  # all of them: no cpuset needed
        with self._lock:
            first = next(self._next)
        return ",".join(str((first + i) % host_cpus) for i in range(count))


def lxcfs_serves() -> bool:
    """Whether lxcfs answers: a dead one leaves a mount whose every read fails."""
    try:
        with open(LXCFS_ROOT / "proc/meminfo", "rb") as meminfo:
            return bool(meminfo.read(1))
    except OSError:
        return False


def mounts(spec: SandboxSpec, disk: Path | None, lxcfs: bool) -> tuple[list[docker.types.Mount], dict[str, str]]:
    """Binds (its disk, its volumes, lxcfs's files over /proc) and, without a disk, tmpfs mounts."""
    binds: list[docker.types.Mount] = []
    tmpfs: dict[str, str] = {}
    if disk is not None:
        binds += [
            docker.types.Mount(WORK_DIR, str(disk / "work"), type="bind"),
            docker.types.Mount("/tmp", str(disk / "tmp"), type="bind"),
        ]
    else:  # no disk of its own here (see sandbox/disks.py): a tmpfs, which counts against memory
        size = min(spec.limits.disk_mib, spec.limits.memory_mib // 2)
        tmpfs = {
            WORK_DIR: f"rw,exec,nosuid,nodev,size={size}m,uid=1000,gid=1000,mode=0755",
            "/tmp": "rw,exec,nosuid,nodev,size=64m,mode=1777",
        }
    for volume in spec.volumes:
        binds.append(docker.types.Mount(volume.target, volume.source, type="bind", read_only=volume.read_only))
    if lxcfs and spec.runtime != "runsc":
        for name in LXCFS_FILES:
            if (LXCFS_ROOT / name).exists():
                binds.append(docker.types.Mount(f"/{name}", str(LXCFS_ROOT / name), type="bind", read_only=True))
    return binds, tmpfs


def host_config(spec: SandboxSpec, disk: Path | None, cpuset: str | None, lxcfs: bool) -> dict[str, Any]:
    """The arguments of the engine's ``create_host_config`` for this sandbox."""
    limits = spec.limits
    memory = f"{limits.memory_mib}m"
    binds, tmpfs = mounts(spec, disk, lxcfs)
    pids, ulimits = limits.pids, []
    if spec.runtime == "runsc":
        pids = limits.pids * GVISOR_HOST_PIDS_PER_PROCESS + GVISOR_HOST_PIDS_BASE
        ulimits = [docker.types.Ulimit(name="nproc", soft=limits.pids, hard=limits.pids)]
    return {
        "network_mode": "none",
        "read_only": True,
        "mounts": binds,
        "tmpfs": tmpfs or None,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids,
        "ulimits": ulimits or None,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(limits.vcpus * 1e9),
        "cpuset_cpus": cpuset,
        "init": True,
        "ipc_mode": "private",
        "runtime": spec.runtime,
        "log_config": docker.types.LogConfig(type="none"),
    }
