"""The narrow port every sandbox backend implements, and the values it trades in.

A driver starts a hardened sandbox from a ``SandboxSpec``, sends it one
``AgentRequest`` at a time (files in, one command, files out) and destroys it.
It knows nothing of tenants, tasks or money: the labels it is given are how a
reaper finds what belongs to whom.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

LABEL_MANAGED = "cloudskills.managed"
LABEL_STORE = "cloudskills.store"
LABEL_SANDBOX = "cloudskills.sandbox"
LABEL_TENANT = "cloudskills.tenant"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox. Finite by default: a sandbox is never unbounded."""

    vcpus: float = 1.0
    memory_mib: int = 512
    pids: int = 256
    # /work is a tmpfs: what is written there counts against memory_mib, so it
    # must stay well under it or a full disk would leave no memory to run in.
    disk_mib: int = 256


@dataclass(frozen=True)
class SandboxSpec:
    """What to start: an image, its limits, and the labels that name the owner."""

    image: str
    limits: Limits = Limits()
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str | None = None  # None is the engine's default (runc)


@dataclass(frozen=True)
class SandboxHandle:
    """A running sandbox as the driver knows it."""

    container_id: str
    name: str


@dataclass(frozen=True)
class StreamOutput:
    """One output stream, bounded by the agent: the kept bytes and what was cut."""

    data: bytes
    total_bytes: int
    truncated: bool

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> StreamOutput:
        return cls(base64.b64decode(wire["data_b64"]), int(wire["total_bytes"]), bool(wire["truncated"]))

    def text(self) -> str:
        """The output as text, with a marker where it was cut."""
        text = self.data.decode("utf-8", errors="replace")
        if self.truncated:
            text += f"\n[cloudskills: output truncated, {self.total_bytes - len(self.data)} more bytes not shown]"
        return text


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    timed_out: bool
    duration_ms: int
    stdout: StreamOutput
    stderr: StreamOutput


@dataclass(frozen=True)
class FileContent:
    path: str
    size: int
    truncated: bool = False
    data: bytes = b""
    error: str | None = None


@dataclass(frozen=True)
class DirEntry:
    name: str
    path: str
    type: str
    size: int


@dataclass(frozen=True)
class FileWrite:
    path: str
    data: bytes
    mode: int | None = None


@dataclass(frozen=True)
class Command:
    """One command: an argv, or code in a language the agent knows."""

    argv: tuple[str, ...] = ()
    code: str | None = None
    language: str = "python"
    timeout_s: float = 60.0
    max_output: int = 64 * 1024
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes = b""
    # Python code runs in the sandbox's persistent interpreter: no interpreter
    # start per call, and variables survive from one call to the next.
    persistent: bool = False


@dataclass(frozen=True)
class FileRead:
    path: str
    max_bytes: int = 1 << 20


@dataclass(frozen=True)
class AgentRequest:
    """Files in, at most one command, files out, or a directory listing: one round trip."""

    writes: tuple[FileWrite, ...] = ()
    command: Command | None = None
    reads: tuple[FileRead, ...] = ()
    list_path: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "writes": [
                {"path": w.path, "data_b64": base64.b64encode(w.data).decode(), "mode": w.mode} for w in self.writes
            ],
            "reads": [{"path": r.path, "max_bytes": r.max_bytes} for r in self.reads],
        }
        if self.command is not None:
            c = self.command
            wire["exec"] = {
                "argv": list(c.argv),
                "code": c.code,
                "language": c.language,
                "timeout_s": c.timeout_s,
                "max_output": c.max_output,
                "env": c.env,
                "cwd": c.cwd,
                "stdin_b64": base64.b64encode(c.stdin).decode() if c.stdin else None,
                "persistent": c.persistent,
            }
        if self.list_path is not None:
            wire["list"] = {"path": self.list_path}
        return wire


@dataclass(frozen=True)
class AgentResponse:
    exec: ExecResult | None
    reads: tuple[FileContent, ...]
    listing: tuple[DirEntry, ...]

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> AgentResponse:
        exec_result = None
        if wire.get("exec"):
            e = wire["exec"]
            exec_result = ExecResult(
                exit_code=int(e["exit_code"]),
                timed_out=bool(e["timed_out"]),
                duration_ms=int(e["duration_ms"]),
                stdout=StreamOutput.from_wire(e["stdout"]),
                stderr=StreamOutput.from_wire(e["stderr"]),
            )
        reads = tuple(
            FileContent(path=r["path"], size=0, error=r["error"])
            if "error" in r
            else FileContent(
                path=r["path"],
                size=int(r["size"]),
                truncated=bool(r["truncated"]),
                data=base64.b64decode(r["data_b64"]),
            )
            for r in wire.get("reads", [])
        )
        listing = tuple(
            DirEntry(name=d["name"], path=d["path"], type=d["type"], size=int(d["size"])) for d in wire.get("list", [])
        )
        return cls(exec=exec_result, reads=reads, listing=listing)


@dataclass(frozen=True)
class LabelledSandbox:
    """A sandbox found on the engine by its labels (what a reaper looks at)."""

    container_id: str
    labels: dict[str, str]
    running: bool


@dataclass(frozen=True)
class SandboxExit:
    """How a sandbox's container ended: when, and why as far as the engine can tell."""

    finished_at: datetime
    reason: str


class SandboxDriver(Protocol):
    """Start, talk to and destroy sandboxes. Blocking calls: run them off the event loop."""

    def create(self, spec: SandboxSpec) -> SandboxHandle: ...

    def call(self, handle: SandboxHandle, request: AgentRequest, deadline_s: float) -> AgentResponse: ...

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool: ...

    def destroy(self, container_id: str) -> None: ...

    def list_labelled(self, labels: dict[str, str]) -> list[LabelledSandbox]: ...

    def exit_of(self, container_id: str) -> SandboxExit | None:
        """None while the container runs; else when and why it stopped (gone: now)."""
        ...
