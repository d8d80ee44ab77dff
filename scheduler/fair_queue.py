"""The tasks queued in this process for a free slot, handed out fairly between tenants.

The next task out is the oldest of the tenant with the fewest tasks running here. A
tenant that queued many long calls (a batch of generations) then holds up another's
call for one slot's turn, not behind all of its own; with one tenant it is first come,
first served.
"""

from __future__ import annotations

from collections import Counter


class FairQueue:
    def __init__(self) -> None:
        # Task id -> its tenant, oldest first (a dict keeps the order they came in).
        self._tenant_of: dict[str, str] = {}
        # Tasks running in this process's slots, by tenant.
        self.running: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._tenant_of)

    def append(self, task_id: str, tenant_id: str = "") -> None:
        """Queue a task; one whose tenant is not known here (requeued from the store) counts as a tenant of its own."""
        self._tenant_of[task_id] = tenant_id

    def pop_next(self) -> str:
        """The task that gets the next free slot (the queue must not be empty)."""
        fewest = min(self.running[tenant] for tenant in set(self._tenant_of.values()))
        task_id = next(t for t, tenant in self._tenant_of.items() if self.running[tenant] == fewest)
        del self._tenant_of[task_id]
        return task_id
