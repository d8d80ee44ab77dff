"""What a shell command gives back, wherever it ran (a sandbox, a VM)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scheduler.errors import Timeout
from skills.base import Money, unsettled


class ExecOutput(BaseModel):
    exit_code: int = Field(description="The command's exit status; 128+N when killed by signal N.")
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    task_id: str
    cost: Money = Field(default_factory=unsettled)


def command_timed_out(timeout_s: float, stdout: str, stderr: str) -> Timeout:
    """The error for a command killed at its timeout, with the end of what it printed."""
    tail = stdout[-400:] + stderr[-400:]
    return Timeout(
        f"the command ran past its timeout_s of {timeout_s:g} s and was killed; "
        f"give it a longer timeout_s or make it finish sooner. Output before it was killed: {tail!r}"
    )
