"""``sandbox_pause`` and ``sandbox_resume``: a session sandbox saved to disk and brought back.

A pause is a real checkpoint (processes, memory and files restored, not a
frozen container holding its memory): ``skills/sandbox/pausing.py`` keeps the
books, ``sandbox/checkpoint.py`` says which runtimes can. Where the engine
cannot checkpoint, ``sandbox_pause`` refuses and names the reason, and the
sandbox runs on untouched. Pausing a paused sandbox, or resuming one that
runs, succeeds and changes nothing.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from common.errors import NotFound
from scheduler.tasks import TaskContext
from skills.base import OpInput
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import SANDBOX_ID
from skills.sandbox.records import SandboxRecord
from skills.sandbox.rows import Sandbox


class PauseInput(OpInput):
    sandbox_id: str = SANDBOX_ID


class PauseOutput(BaseModel):
    sandbox_id: str
    state: str = Field(description="paused, or running.")
    paused_at: str | None = None
    checkpoint_mib: int = Field(0, description="The checkpoint's size on disk, billed with the disk while paused.")
    took_ms: int = Field(description="How long the checkpoint or the restore took.")


def output(row: Sandbox, began: float) -> PauseOutput:
    return PauseOutput(
        sandbox_id=row.id,
        state=row.state,
        paused_at=row.paused_at.isoformat() if row.paused_at is not None else None,
        checkpoint_mib=row.checkpoint_mib,
        took_ms=round((time.monotonic() - began) * 1000),
    )


def session_record(ctx: TaskContext, sandbox_id: str) -> SandboxRecord:
    record = ctx.service(SandboxManager).get(ctx.tenant_id, sandbox_id, paused_ok=True)
    if record.task_id is not None or record.container_id is None:
        raise NotFound(f"no sandbox {sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
    return record


async def pause(ctx: TaskContext, args: PauseInput) -> PauseOutput:
    """Pause a session sandbox to disk, where the engine can checkpoint it."""
    began = time.monotonic()
    record = session_record(ctx, args.sandbox_id)
    return output(await ctx.service(SandboxManager).pausing.pause(record), began)


async def resume(ctx: TaskContext, args: PauseInput) -> PauseOutput:
    """Resume a paused session sandbox; one that runs is left as it is."""
    began = time.monotonic()
    record = session_record(ctx, args.sandbox_id)
    return output(await ctx.service(SandboxManager).pausing.resume(record), began)
