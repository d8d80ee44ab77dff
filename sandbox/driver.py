"""The narrow port every sandbox backend implements, and the values it trades in.

A driver starts a hardened sandbox from a ``SandboxSpec``, sends it one
``AgentRequest`` at a time (files in, one command, files out) and destroys it.
It knows nothing of tenants, tasks or money: the labels it is given are how a
reaper finds what belongs to whom.

On the wire a request is a JSON header and the raw bytes of its blobs (file
contents, a command's stdin), and so is an answer (files read, a command's
output): contents are never base64-encoded or JSON-escaped on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sandbox.outputs import CollectedOutputs, OutputCaps
from sandbox.processes import ProcessAnswer, ProcessRequest

# Where a running command's output goes as it comes: (stream name, bytes), in order.
OutputSink = Callable[[str, bytes], None]

LABEL_MANAGED = "cloudskills.managed"
LABEL_STORE = "cloudskills.store"
LABEL_SANDBOX = "cloudskills.sandbox"
LABEL_TENANT = "cloudskills.tenant"
# A warm pool's sandbox: made ahead of need, held by its server until handed over.
LABEL_POOL = "cloudskills.pool"
# The server process (scheduler/workers.py) whose warm pool made it: a live replica's are
# its own, a dead one's are strays.
LABEL_WORKER = "cloudskills.worker"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox. Finite by default: a sandbox is never unbounded."""

    vcpus: float = 1.0
    memory_mib: int = 512
    pids: int = 256
    # The disk that /work and /tmp share: its own filesystem, never memory.
    disk_mib: int = 2048


# A label per volume a sandbox mounts (``<prefix><volume name>``: ``ro`` or ``rw``), so
# whoever owns a volume can ask the engine which sandboxes mount it now.
LABEL_VOLUME_PREFIX = "cloudskills.volume."


@dataclass(frozen=True)
class VolumeMount:
    """A directory of the engine's host bound into the sandbox at ``target``: plain data,
    whatever made it (a workspace's filesystem). ``name`` is what its label says."""

    name: str
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """What to start: an image, its limits, and the labels that name the owner."""

    image: str
    limits: Limits = Limits()
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str | None = None  # None is the engine's default (runc)
    # Until a request hands it over (AgentRequest.idle_s), the sandbox lives only
    # while its server does: it ends when the server lets go of it, or after this
    # many seconds without a request (a warm pool sends heartbeats).
    hold_s: float = 10.0
    volumes: tuple[VolumeMount, ...] = ()
    # Set in the container's environment (a proxy for its commands, ...).
    env: dict[str, str] = field(default_factory=dict)

    def volume_labels(self) -> dict[str, str]:
        return {f"{LABEL_VOLUME_PREFIX}{v.name}": "ro" if v.read_only else "rw" for v in self.volumes}


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
    def from_wire(cls, wire: dict[str, Any], blobs: list[bytes]) -> StreamOutput:
        return cls(blobs[int(wire["blob"])], int(wire["total_bytes"]), bool(wire["truncated"]))

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
    # Started in the background: the answer comes at once with its process (AgentResponse.process).
    background: bool = False


@dataclass(frozen=True)
class FileRead:
    path: str
    max_bytes: int = 1 << 20


@dataclass(frozen=True)
class AgentRequest:
    """Files in, at most one command, files out, or a directory listing: one round trip.

    ``idle_s`` hands the sandbox over: from this request on it ends by itself
    after that many seconds without one, whether or not a server is alive.
    Until then it lives only while the server that started it does."""

    writes: tuple[FileWrite, ...] = ()
    command: Command | None = None
    reads: tuple[FileRead, ...] = ()
    list_path: str | None = None
    idle_s: float | None = None
    # Bring back the files the command leaves under /work/outputs (AgentResponse.outputs).
    outputs: OutputCaps | None = None
    process: ProcessRequest | None = None

    def to_wire(self) -> tuple[dict[str, Any], list[bytes]]:
        """The JSON header and the blobs that follow it, in order."""
        blobs = [w.data for w in self.writes]
        wire: dict[str, Any] = {
            "writes": [{"path": w.path, "blob": i, "mode": w.mode} for i, w in enumerate(self.writes)],
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
                "persistent": c.persistent,
                "background": c.background,
            }
            if self.outputs is not None:
                wire["exec"]["collect"] = self.outputs.to_wire()
            if c.stdin:
                wire["exec"]["stdin_blob"] = len(blobs)
                blobs.append(c.stdin)
        if self.list_path is not None:
            wire["list"] = {"path": self.list_path}
        if self.idle_s is not None:
            wire["idle_s"] = self.idle_s
        if self.process is not None:
            wire["process"] = self.process.to_wire()
        wire["blobs"] = [len(blob) for blob in blobs]
        return wire, blobs


@dataclass(frozen=True)
class AgentResponse:
    exec: ExecResult | None
    reads: tuple[FileContent, ...]
    listing: tuple[DirEntry, ...]
    outputs: CollectedOutputs | None = None
    process: ProcessAnswer | None = None

    @classmethod
    def from_wire(cls, wire: dict[str, Any], blobs: list[bytes]) -> AgentResponse:
        exec_result = None
        if wire.get("exec"):
            e = wire["exec"]
            exec_result = ExecResult(
                exit_code=int(e["exit_code"]),
                timed_out=bool(e["timed_out"]),
                duration_ms=int(e["duration_ms"]),
                stdout=StreamOutput.from_wire(e["stdout"], blobs),
                stderr=StreamOutput.from_wire(e["stderr"], blobs),
            )
        reads = tuple(
            FileContent(path=r["path"], size=0, error=r["error"])
            if "error" in r
            else FileContent(
                path=r["path"],
                size=int(r["size"]),
                truncated=bool(r["truncated"]),
                data=blobs[int(r["blob"])],
            )
            for r in wire.get("reads", [])
        )
        listing = tuple(
            DirEntry(name=d["name"], path=d["path"], type=d["type"], size=int(d["size"])) for d in wire.get("list", [])
        )
        outputs = wire.get("exec", {}).get("outputs") if wire.get("exec") else None
        return cls(
            exec=exec_result,
            reads=reads,
            listing=listing,
            outputs=CollectedOutputs.from_wire(outputs, blobs) if outputs is not None else None,
            process=ProcessAnswer.from_wire(wire["process"], blobs) if wire.get("process") else None,
        )


@dataclass(frozen=True)
class LabelledSandbox:
    """A sandbox found on the engine by its labels (what a reaper looks at)."""

    container_id: str
    labels: dict[str, str]
    running: bool
    # Stopped by a checkpoint (sandbox_pause): it exited 0, which a sandbox's agent never does
    # by itself (it ends with 75 or 76, or is killed). It still binds its workspaces.
    checkpointed: bool = False


@dataclass(frozen=True)
class SandboxExit:
    """How a sandbox's container ended: when, and why as far as the engine can tell."""

    finished_at: datetime
    reason: str
    expired: bool = False  # it ended by itself, idle past the limit it was handed over with


class SandboxDriver(Protocol):
    """Start, talk to and destroy sandboxes. Blocking calls: run them off the event loop."""

    def create(self, spec: SandboxSpec) -> SandboxHandle: ...

    def call(
        self, handle: SandboxHandle, request: AgentRequest, deadline_s: float, on_output: OutputSink | None = None
    ) -> AgentResponse:
        """One round trip; ``on_output`` gets the command's output while it runs, where the
        backend can stream it (what it was not given comes with the answer)."""
        ...

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool: ...

    def destroy(self, container_id: str) -> None: ...

    def list_labelled(self, labels: dict[str, str]) -> list[LabelledSandbox]: ...

    def exit_of(self, container_id: str) -> SandboxExit | None:
        """None while the container runs; else when and why it stopped (gone: now)."""
        ...

    def abandon(self, labels: list[str]) -> None:
        """Containers (``label=value`` each) this process asked the engine for but stops
        without waiting for: removed once the engine has made them, whoever is left."""
        ...

    def pause_problem(self, container_id: str) -> str | None:
        """Why this sandbox cannot be paused to disk here; None when it can."""
        ...

    def pause(self, container_id: str) -> int:
        """Checkpoint the sandbox to disk and stop it; the checkpoint's bytes (0: unknown)."""
        ...

    def resume(self, container_id: str) -> None:
        """Start a paused sandbox again from its checkpoint, every process as it was."""
        ...

    def sweep(self) -> list[str]:
        """Remove what a killed process left half set up on this host, any process's: a
        disk being made, a warm sandbox that ended when its server went away before handing
        it over (nothing refers to it). Other containers the reaper judges by their labels."""
        ...
