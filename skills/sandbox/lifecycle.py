"""``sandbox_pause`` and ``sandbox_resume``: a session sandbox saved to disk and brought back.

A pause must be a real checkpoint (processes and memory restored, not a
frozen container holding its memory). Where the engine cannot checkpoint
(``sandbox/checkpoint.py`` says why), ``sandbox_pause`` refuses and names the
reason, and the sandbox runs on untouched; ``sandbox_resume`` of a sandbox
that runs succeeds, as there is nothing to bring back.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel, Field

from common.errors import BackendUnavailable, NotFound
from sandbox.checkpoint import pause_problem
from scheduler.tasks import TaskContext
from skills.base import OpInput
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import SANDBOX_ID
from skills.sandbox.network import Egress


class PauseInput(OpInput):
    sandbox_id: str = SANDBOX_ID


class PauseOutput(BaseModel):
    sandbox_id: str
    state: str = Field(description="paused, or running.")
    paused_at: str | None = None


def runtime_of(egress: Egress, container_id: str) -> str | None:
    try:
        config = egress.docker.client.api.inspect_container(container_id).get("HostConfig") or {}
    except Exception:  # gone or unreachable: the check below names the engine's limits anyway
        return None
    runtime = config.get("Runtime")
    return str(runtime) if runtime else None


async def pause(ctx: TaskContext, args: PauseInput) -> PauseOutput:
    """Pause a session sandbox to disk, where the engine can checkpoint it."""
    record = ctx.service(SandboxManager).get(ctx.tenant_id, args.sandbox_id)
    if record.task_id is not None or record.container_id is None:
        raise NotFound(f"no sandbox {args.sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
    egress = ctx.service(Egress)
    runtime = await anyio.to_thread.run_sync(runtime_of, egress, record.container_id)
    problem = await anyio.to_thread.run_sync(pause_problem, egress.docker.client.api, runtime, egress.docker.local)
    raise BackendUnavailable(
        f"this runtime cannot pause: {problem}. The sandbox runs on untouched: keep using it (it ends after its "
        "ttl_s idle), or save what you need to a workspace and destroy it."
    )


async def resume(ctx: TaskContext, args: PauseInput) -> PauseOutput:
    """Resume a paused session sandbox; one that runs is left as it is."""
    record = ctx.service(SandboxManager).get(ctx.tenant_id, args.sandbox_id)
    if record.task_id is not None:
        raise NotFound(f"no sandbox {args.sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
    return PauseOutput(sandbox_id=record.id, state="running")
