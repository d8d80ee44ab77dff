"""Files a command leaves under /work/outputs, brought back with its result.

The agent notes what the outputs directory holds before the command and
returns what is new or changed after it, within the caps asked for; each file
past a cap is named with the reason it stayed behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OUTPUTS_DIR = "/work/outputs"


@dataclass(frozen=True)
class OutputCaps:
    """How much of the outputs directory one result may carry."""

    path: str = OUTPUTS_DIR
    max_files: int = 20
    max_file_bytes: int = 4 << 20
    max_total_bytes: int = 8 << 20

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "max_files": self.max_files,
            "max_file_bytes": self.max_file_bytes,
            "max_total_bytes": self.max_total_bytes,
        }


@dataclass(frozen=True)
class OutputFile:
    path: str
    data: bytes


@dataclass(frozen=True)
class LeftOut:
    path: str
    size: int
    reason: str


@dataclass(frozen=True)
class CollectedOutputs:
    files: tuple[OutputFile, ...] = ()
    left_out: tuple[LeftOut, ...] = ()

    @classmethod
    def from_wire(cls, wire: dict[str, Any], blobs: list[bytes]) -> CollectedOutputs:
        return cls(
            files=tuple(OutputFile(str(f["path"]), blobs[int(f["blob"])]) for f in wire.get("files") or []),
            left_out=tuple(
                LeftOut(str(f["path"]), int(f["size"]), str(f["reason"])) for f in wire.get("left_out") or []
            ),
        )
