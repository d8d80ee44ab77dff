"""The tasks queued in this process for a free slot, handed out fairly between tenants.

The next task out is the oldest of the tenant with the fewest tasks running here. A
tenant that queued many long calls (a batch of generations) then holds up another's
call for one slot's turn, not behind all of its own; with one tenant it is first come,
first served.
"""

from __future__ import annotations

from collections import Counter


class FairQueue:
    """Queued task ids with their tenants, and the tasks running here by tenant (the
    scheduler says when one ``started`` and ``ended``)."""

    def __init__(self) -> None:
        # Task id -> its tenant, oldest first (a dict keeps the order they came in).
        self._tenant_of: dict[str, str] = {}
        # Tasks running in this process's slots, by tenant (a tenant with none has no key).
        self.running: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._tenant_of)

    def append(self, task_id: str, tenant_id: str) -> None:
        """Queue a task of ``tenant_id``."""
        self._tenant_of[task_id] = tenant_id

    def started(self, tenant_id: str) -> None:
        self.running[tenant_id] += 1

    def ended(self, tenant_id: str) -> None:
        self.running[tenant_id] -= 1
        if self.running[tenant_id] <= 0:
            del self.running[tenant_id]

    def holds(self, tenant_id: str) -> bool:
        """Whether a task of ``tenant_id`` is queued."""
        return tenant_id in self._tenant_of.values()

    def pop_oldest_of(self, tenant_id: str) -> str | None:
        """The oldest queued task of ``tenant_id``, taken out of the queue; None if it has none."""
        task_id = next((t for t, tenant in self._tenant_of.items() if tenant == tenant_id), None)
        if task_id is not None:
            del self._tenant_of[task_id]
        return task_id

    def pop_next(self) -> str:
        """The task that gets the next free slot (the queue must not be empty)."""
        fewest = min(self.running[tenant] for tenant in set(self._tenant_of.values()))
        task_id = next(t for t, tenant in self._tenant_of.items() if self.running[tenant] == fewest)
        del self._tenant_of[task_id]
        return task_id
