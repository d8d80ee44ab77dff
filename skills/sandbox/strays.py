"""Stray containers: labelled with this store, but nothing of ours holds them.

A container belongs to something when this process's warm pool holds it, a
removal of ours is under way, its record is live, or it is a warm sandbox of
another replica that is alive (``scheduler.workers``). Anything else is a stray:
a destroyed sandbox's container a killed process never removed, or the warm pool
of a replica that died. One replica at a time reaps (it leads the duties).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from common.errors import CloudSkillsError
from sandbox.driver import LABEL_SANDBOX, LABEL_WORKER, LabelledSandbox
from skills.sandbox.records import LIVE_STATES
from skills.sandbox.rows import Sandbox

if TYPE_CHECKING:
    from skills.sandbox.manager import SandboxManager

log = logging.getLogger("cloudskills.sandboxes")


async def remove_strays(manager: SandboxManager, containers: list[LabelledSandbox]) -> list[str]:
    """Remove the strays among ``containers``; their ids."""
    workers = manager.workers
    others = workers.alive() - {workers.id} if workers is not None else set()
    removed = []
    for container in containers:
        # Judged one at a time, with no await between the judgement and the
        # removal's start: a sandbox the pool is handing over, or whose record
        # was written since the listing, is never taken for a stray.
        if container.labels.get(LABEL_WORKER) in others:
            continue
        if owned(manager, container.container_id, container.labels.get(LABEL_SANDBOX, "")):
            continue
        log.info("removing stray container %s", container.container_id[:12])
        try:
            await anyio.to_thread.run_sync(manager.driver.destroy, container.container_id)
        except CloudSkillsError as exc:  # the others still go; the next pass tries this one again
            log.warning("could not remove stray container %s: %s", container.container_id[:12], exc)
            continue
        removed.append(container.container_id)
    return removed


def owned(manager: SandboxManager, container_id: str, sandbox_id: str) -> bool:
    """Whether a container belongs to something of this process's: the pool, a removal
    under way, or a live record."""
    if container_id in manager.removing or (manager.pool is not None and manager.pool.holds(sandbox_id)):
        return True
    with manager.store.transaction() as session:
        row = session.get(Sandbox, sandbox_id)
        return row is not None and row.state in LIVE_STATES
