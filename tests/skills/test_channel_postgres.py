"""Channels on a PostgreSQL store shared by two replicas: a receive waiting on one is woken
by a send through the other (LISTEN/NOTIFY), and concurrent claims never take the same
message (FOR UPDATE SKIP LOCKED).

The PostgreSQL server is a real one, with pgvector since the store's every skill
migrates on it: ``postgres_url`` (tests/skills/conftest.py) runs the `pgserver`
package's as a local process, a database per test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from runtime.storage import open_store
from runtime.tenants import ensure_tenant
from scheduler.leases import Leases
from scheduler.models import Lease, utcnow
from scheduler.pricing import PriceCatalog
from scheduler.store import Store
from skills.channel import queue
from skills.channel.channels import ChannelManager, bell
from skills.channel.wakeups import PostgresNotifier
from tests.polling import until

pytestmark = pytest.mark.anyio


@dataclass
class Replica:
    store: Store
    notifier: PostgresNotifier
    channels: ChannelManager


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two processes' worth of store, notifier and manager on one PostgreSQL, each listening."""
    built = []
    for n in range(2):
        store = open_store(postgres_url) if n == 0 else Store(postgres_url)
        notifier = PostgresNotifier(postgres_url)
        built.append(Replica(store, notifier, ChannelManager(store, Leases(store, PriceCatalog.load()), notifier)))
    ensure_tenant(built[0].store, "acme")
    async with anyio.create_task_group() as group:
        for replica in built:
            group.start_soon(replica.channels.serve)
        with anyio.fail_after(30):
            for replica in built:
                await replica.notifier.listening.wait()
        yield built[0], built[1]
        group.cancel_scope.cancel()
    for replica in built:
        replica.store.close()


async def receive_one(replica: Replica, expected: str, answered: list[float]) -> None:
    got = await replica.channels.receive("acme", "jobs", 1, 20.0, 30.0)
    answered.append(time.perf_counter())
    assert [d.body for d in got] == [expected]
    assert replica.channels.ack("acme", "jobs", [d.receipt for d in got]) == (1, [])


async def test_a_receive_on_one_replica_wakes_on_a_send_through_another(replicas: tuple[Replica, Replica]) -> None:
    here, there = replicas
    latencies = []
    for n in range(5):
        answered: list[float] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(receive_one, here, str(n), answered)
                await until(lambda: here.channels.bells.waiting(bell("acme", "jobs")) == 1, "the receive to wait")
                sent_at = time.perf_counter()
                there.channels.send("acme", "jobs", str(n), None, None)
        latencies.append(answered[0] - sent_at)
    # Woken by the NOTIFY on commit, not by the end of the 20 s wait.
    print(f"send on one replica to receive on the other: {[round(s * 1000, 1) for s in latencies]} ms")
    assert max(latencies) < 2.0, latencies
    described = here.channels.describe("acme", "jobs")
    assert (described.stats.depth, described.stats.in_flight, described.row.stored_bytes) == (0, 0, 0)


async def test_concurrent_claims_skip_each_others_messages(replicas: tuple[Replica, Replica]) -> None:
    here, there = replicas
    sent = [here.channels.send("acme", "work", str(n), None, None).message_id for n in range(6)]
    channel_id = here.channels.describe("acme", "work").row.id
    with here.store.transaction() as first, there.store.transaction() as second:
        now = utcnow()
        # The first claim's rows stay locked until it commits: the second takes the next ones.
        taken = queue.claim(first, channel_id, 5, now, 3, 30.0)
        skipped = queue.claim(second, channel_id, 5, now, 3, 30.0)
        assert [m.message_id for m in taken] == sent[:3] and [m.message_id for m in skipped] == sent[3:]


async def test_the_whole_cycle_and_its_storage_lease_on_postgresql(replicas: tuple[Replica, Replica]) -> None:
    here, there = replicas
    view, made = here.channels.create("acme", "cycle", 2, 3600)
    assert made and view.row.max_deliveries == 2
    first = there.channels.send("acme", "cycle", '{"n":1}', "planner", "k")
    again = here.channels.send("acme", "cycle", '{"n":1}', "planner", "k")
    assert again.duplicate and again.message_id == first.message_id
    with here.store.transaction() as session:
        lease = session.get(Lease, view.row.id)
        assert lease is not None and lease.rate == {"channel.storage_mib_ms": 1000} and lease.ended_at is None
    (got,) = await here.channels.receive("acme", "cycle", 5, 0.0, 0.1)
    assert got.sender_agent == "planner" and got.deliveries == 1
    with anyio.fail_after(10):
        (back,) = await there.channels.receive("acme", "cycle", 5, 5.0, 0.1)
    assert back.message_id == got.message_id and back.deliveries == 2
    await until(lambda: utcnow() >= back.lease_until, "the second lease to run out")
    await there.channels.reap()
    described = there.channels.describe("acme", "cycle")
    assert (described.stats.depth, described.stats.dead_letters) == (0, 1)
    (dead,) = await here.channels.receive("acme", "cycle", 5, 0.0, 30.0, dead_letters=True)
    assert here.channels.ack("acme", "cycle", [dead.receipt]) == (1, [])
    assert await here.channels.reap() == [view.row.id]  # what the ack freed is billed no more
    with here.store.transaction() as session:
        ended = session.get(Lease, view.row.id)
        assert ended is not None and ended.end_reason == "empty"
    assert there.channels.delete("acme", "cycle") and not here.channels.delete("acme", "cycle")
