"""One pass of the resource duties on a real SQLite store: the order of its work."""

from __future__ import annotations

import pytest

from scheduler.leases import Leases
from scheduler.pricing import PriceCatalog
from scheduler.resources import ResourceDuties
from scheduler.store import Store

pytestmark = pytest.mark.anyio


class Kind:
    """A kind that reaps what the settled tasks ended, as the sandbox kind does."""

    kind = "thing"

    def __init__(self, ended: set[str]) -> None:
        self.ended = ended
        self.reaped: list[str] = []

    async def recover(self) -> list[str]:
        return []

    async def reap(self) -> list[str]:
        self.reaped += sorted(self.ended)
        return sorted(self.ended)

    async def stop_for_budget(self, resource_id: str) -> None:
        raise AssertionError("no lease here")


async def test_a_pass_settles_dead_servers_tasks_before_it_reaps(store: Store) -> None:
    # The chore that fails a dead server's tasks runs first, so the same pass reaps what
    # those tasks held: a server that stops right after does not leave it running.
    ended: set[str] = set()
    kind = Kind(ended)
    duties = ResourceDuties([kind], Leases(store, PriceCatalog("test", "USD", rates={})), [lambda: ended.add("sb_1")])
    await duties.pass_once()
    assert kind.reaped == ["sb_1"]
    assert duties.passes[-1].reaped == {"thing": 1}


async def test_a_failing_chore_does_not_stop_the_reaping(store: Store) -> None:
    def locked() -> None:
        raise RuntimeError("database is locked")

    ended = {"sb_1"}
    kind = Kind(ended)
    duties = ResourceDuties([kind], Leases(store, PriceCatalog("test", "USD", rates={})), [locked])
    await duties.pass_once()
    assert kind.reaped == ["sb_1"]
    assert duties.passes[-1].errors == ("chore locked: database is locked",)
