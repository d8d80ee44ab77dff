"""``sandbox_describe``: a session sandbox's state and what it uses now."""

from __future__ import annotations

import anyio
from pydantic import BaseModel, Field

from common.errors import NotFound
from sandbox.engines import Engines
from sandbox.stats import sandbox_stats
from scheduler.tasks import TaskContext
from skills.base import OpInput
from skills.sandbox.expose import ExposedPort, Exposures
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import SANDBOX_ID
from skills.sandbox.network import Egress
from skills.sandbox.records import PAUSED_STATES


class DescribeInput(OpInput):
    sandbox_id: str = SANDBOX_ID


class ProcessNow(BaseModel):
    pid: int
    command: str


class DescribeOutput(BaseModel):
    sandbox_id: str
    state: str = Field(description="running, paused or resuming (while paused the usage figures are null).")
    template: str
    engine: str = Field(description="The Docker engine it runs on ('default' where the server has one).")
    vcpus: float
    memory_mib: int = Field(description="Its memory limit.")
    disk_mib: int = Field(description="Its disk's size.")
    cpu_seconds: float | None = Field(description="CPU time its processes have used since it started.")
    memory_bytes: int | None = Field(description="Memory in use now (without page cache it can drop).")
    memory_peak_bytes: int | None = Field(description="The most memory it has used at once (null where unknown).")
    disk_used_bytes: int | None = Field(description="Bytes used on its disk (/work and /tmp).")
    processes: list[ProcessNow] = Field(description="Every process running in it now.")
    exposed_ports: list[ExposedPort]
    network: list[str] | None = Field(description="Its egress allow-list; null: no network at all.")
    created_at: str
    last_used_at: str
    paused_at: str | None = Field(None, description="When it was paused (sandbox_pause); null while it runs.")
    checkpoint_mib: int | None = Field(None, description="While paused: its checkpoint's size on disk.")


async def describe(ctx: TaskContext, args: DescribeInput) -> DescribeOutput:
    """A session sandbox's state, usage now, exposed ports and network policy."""
    sandboxes = ctx.service(SandboxManager)
    record = sandboxes.get(ctx.tenant_id, args.sandbox_id, paused_ok=True)
    if record.task_id is not None or record.container_id is None:
        raise NotFound(f"no sandbox {args.sandbox_id!r}: call sandbox_list to see yours, or sandbox_create.")
    row = sandboxes.row(record.id)
    engines = sandboxes.driver if isinstance(sandboxes.driver, Engines) else None
    engine = await anyio.to_thread.run_sync(engines.engine_of, record.container_id) if engines else None
    common = {
        "engine": engine.name if engine is not None else "default",
        "sandbox_id": row.id,
        "state": row.state,
        "template": row.template,
        "vcpus": row.vcpus,
        "memory_mib": row.memory_mib,
        "disk_mib": row.disk_mib,
        "exposed_ports": ctx.service(Exposures).exposed(row.id),
        "network": ctx.service(Egress).policy_of(row.id),
        "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat(),
    }
    if row.state in PAUSED_STATES:  # nothing runs: its processes and memory are on disk
        paused_at = row.paused_at.isoformat() if row.paused_at is not None else None
        nothing = {"cpu_seconds": None, "memory_bytes": None, "memory_peak_bytes": None, "disk_used_bytes": None}
        return DescribeOutput(**common, **nothing, processes=[], paused_at=paused_at, checkpoint_mib=row.checkpoint_mib)
    driver = engine.driver if engine is not None else ctx.service(Egress).docker
    try:
        stats = await anyio.to_thread.run_sync(sandbox_stats, driver.client.api, record.container_id)
    except NotFound:
        # It ended since it was last looked at (expired, died): the books say how, from now on.
        await sandboxes.mark_dead(record.id, record.container_id)
        sandboxes.get(ctx.tenant_id, args.sandbox_id, paused_ok=True)  # raises, saying how it ended
        raise
    return DescribeOutput(
        **common,
        cpu_seconds=round(stats.cpu_seconds, 3),
        memory_bytes=stats.memory_bytes,
        memory_peak_bytes=stats.memory_peak_bytes,
        disk_used_bytes=stats.disk_used_bytes,
        processes=[ProcessNow(pid=p.pid, command=p.command) for p in stats.processes],
    )
