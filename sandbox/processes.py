"""Background processes in a sandbox, as the driver trades in them.

A ``Command`` with ``background`` set starts a process and answers at once;
a ``ProcessRequest`` lists them, reads one's output from an offset, or kills
one. The output lives inside the sandbox (``sandbox/agent/processes.py``), in
a bounded ring per process: the server keeps none of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ProcessRequest:
    op: Literal["list", "output", "kill"]
    process_id: str | None = None
    offset: int = 0
    max_bytes: int = 65536

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "process_id": self.process_id, "offset": self.offset, "max_bytes": self.max_bytes}


@dataclass(frozen=True)
class ProcessInfo:
    process_id: str
    command: str
    pid: int
    running: bool
    exit_code: int | None
    started_at: float  # seconds since the epoch, the sandbox's clock
    output_bytes: int  # everything it has written so far, kept or not

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ProcessInfo:
        code = wire.get("exit_code")
        return cls(
            process_id=str(wire["process_id"]),
            command=str(wire["command"]),
            pid=int(wire["pid"]),
            running=bool(wire["running"]),
            exit_code=None if code is None else int(code),
            started_at=float(wire["started_at"]),
            output_bytes=int(wire["output_bytes"]),
        )


@dataclass(frozen=True)
class ProcessOutput:
    """A piece of a process's output: ``data`` starts at ``offset`` of its whole stream."""

    info: ProcessInfo
    offset: int
    next_offset: int
    dropped_bytes: int  # asked for but no longer kept (the ring moved on)
    more: bool
    data: bytes


@dataclass(frozen=True)
class ProcessAnswer:
    processes: tuple[ProcessInfo, ...] = ()
    output: ProcessOutput | None = None

    @classmethod
    def from_wire(cls, wire: dict[str, Any], blobs: list[bytes]) -> ProcessAnswer:
        infos = tuple(ProcessInfo.from_wire(p) for p in wire.get("processes") or [])
        output = None
        if wire.get("output_blob") is not None and infos:
            meta = (wire.get("processes") or [])[0]
            output = ProcessOutput(
                info=infos[0],
                offset=int(meta["offset"]),
                next_offset=int(meta["next_offset"]),
                dropped_bytes=int(meta["dropped_bytes"]),
                more=bool(meta["more"]),
                data=blobs[int(wire["output_blob"])],
            )
        return cls(processes=infos, output=output)
