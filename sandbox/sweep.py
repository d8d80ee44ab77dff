"""What a killed process left half set up on an engine, any process's, and its removal.

Disks being made (on this host); warm sandboxes that ended when their server
went away before handing them over, or were made but never started (no record
refers to them, whichever store made them); kept disks (``sandbox/disks.py``)
whose container is gone. Other containers the reaper judges by their labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker

from sandbox.disks import LoopDisks
from sandbox.driver import LABEL_MANAGED, LABEL_POOL
from sandbox.exits import EXIT_RELEASED

# A container made this long ago and never started is no creation under way.
UNBORN_AFTER_S = 60.0


def sweep_engine(api: docker.APIClient, disks: LoopDisks | None, destroy: Callable[[str], None]) -> list[str]:
    """Remove the leftovers; what was removed (container ids and disk names)."""
    swept = disks.sweep() if disks is not None else []
    swept += sweep_kept_disks(api, disks)
    pool = [f"{LABEL_MANAGED}=1", f"{LABEL_POOL}=1"]
    released = api.containers(all=True, filters={"label": pool, "exited": EXIT_RELEASED})
    # Made but never started: its server stopped in between (long enough ago).
    unborn = api.containers(all=True, filters={"label": pool, "status": "created"})
    old = time.time() - UNBORN_AFTER_S
    for container in [*released, *(c for c in unborn if int(c.get("Created") or 0) < old)]:
        destroy(str(container["Id"]))
        swept.append(str(container["Id"]))
    return swept


def sweep_kept_disks(api: docker.APIClient, disks: LoopDisks | None) -> list[str]:
    """Kept disks whose container is gone (removed while no server of ours ran)."""
    if disks is None or not (kept := disks.kept_names()):
        return []
    names = {str(n).lstrip("/") for c in api.containers(all=True) for n in c.get("Names") or ()}
    old = time.time() - UNBORN_AFTER_S
    gone = [name for name in kept if name not in names and disks.made_before(name, old)]
    for name in gone:
        disks.discard(name)
    return gone
