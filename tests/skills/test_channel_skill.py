"""The channel skill through the MCP client, as agents use it, on the embedded SQLite store.

Agents here are MCP sessions of their own on one server: a planner and workers,
a receiver and a sender, two tenants. Waits are bounded with ``anyio.fail_after``
and wait on the server's own state, never on fixed sleeps.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitResult
from sqlalchemy import select, update

from runtime.app import App
from runtime.settings import Settings, load_settings
from runtime.tenants import ensure_tenant, update_tenant
from sandbox.docker import DockerDriver
from scheduler.models import Lease, LedgerEntry, Tenant
from skills.channel.channels import ChannelManager, bell
from skills.channel.rows import Channel, ChannelMessage
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = pytest.mark.anyio

JOBS = 50
LEASE_S = 2.0  # long enough for a job here, short enough to wait out a killed worker's


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    """A running app that needs no Docker: channels live in the store alone."""
    application = App(settings, DockerDriver("unix:///nonexistent/docker.sock"))
    async with application.running(serving=False):
        yield application
    application.close()


def channels(app: App) -> ChannelManager:
    return app.service(ChannelManager)


def set_quotas(app: App, tenant_id: str, **quotas: int) -> None:
    with app.store.transaction() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(quotas=quotas))


async def test_a_planner_and_two_workers_do_every_job_exactly_once_even_when_one_is_killed(app: App) -> None:
    """50 jobs; each worker receives, reports a result and acks. Worker a is killed
    mid-job (its session closes without an ack): its job goes to worker b after the lease."""
    killed: list[dict[str, Any]] = []

    async def worker(name: str, die_at: int | None = None) -> None:
        async with mcp_client(app, agent=f"worker-{name}") as client:
            done = 0
            while True:
                got = await call(client, "channel_receive", channel="jobs", wait_s=10, lease_s=LEASE_S)
                if not got["messages"]:
                    continue
                (job,) = got["messages"]
                if done == die_at:
                    killed.append(job)
                    return  # the session closes here, the job unacked
                assert job["sender_agent"] == "planner"
                report = {"job": job["body"]["job"], "worker": name, "deliveries": job["deliveries"]}
                await call(client, "channel_send", channel="results", body=report)
                await call(client, "channel_ack", channel="jobs", receipts=[job["receipt"]])
                done += 1

    with anyio.fail_after(90):
        async with mcp_client(app, agent="planner") as planner, anyio.create_task_group() as workers:
            workers.start_soon(worker, "a", 5)
            workers.start_soon(worker, "b")
            for n in range(JOBS):
                await call(planner, "channel_send", channel="jobs", body={"job": n}, dedupe_key=f"job-{n}")
            results: list[dict[str, Any]] = []
            while len(results) < JOBS:
                got = await call(planner, "channel_receive", channel="results", max_messages=10, wait_s=10)
                results += [message["body"] | {"from": message["sender_agent"]} for message in got["messages"]]
                receipts = [message["receipt"] for message in got["messages"]]
                if receipts:
                    await call(planner, "channel_ack", channel="results", receipts=receipts)
            workers.cancel_scope.cancel()
        async with mcp_client(app) as planner:
            jobs = await call(planner, "channel_describe", channel="jobs")
            left = await call(planner, "channel_receive", channel="results", max_messages=10)

    assert Counter(r["job"] for r in results) == Counter(range(JOBS)), "every job done exactly once"
    assert not left["messages"] and (jobs["depth"], jobs["in_flight"], jobs["dead_letters"]) == (0, 0, 0)
    (lost,) = killed
    redone = next(r for r in results if r["job"] == lost["body"]["job"])
    assert lost["deliveries"] == 1
    assert redone == {"job": lost["body"]["job"], "worker": "b", "deliveries": 2, "from": "worker-b"}
    assert all(r["from"] == f"worker-{r['worker']}" for r in results)


async def test_a_waiting_receive_wakes_on_a_send_from_another_session(app: App) -> None:
    answered: dict[str, Any] = {}

    async def receiver(client: Client) -> None:
        answered.update(await call(client, "channel_receive", channel="inbox", wait_s=20))
        answered["at"] = time.perf_counter()

    with anyio.fail_after(10):
        async with (
            mcp_client(app, agent="reader") as waiting,
            mcp_client(app, agent="writer") as sending,
            anyio.create_task_group() as group,
        ):
            group.start_soon(receiver, waiting)
            await until(lambda: channels(app).bells.waiting(bell("local", "inbox")) == 1, "the receive to wait")
            sent_at = time.perf_counter()
            sent = await call(sending, "channel_send", channel="inbox", body={"hello": "world"})
    (message,) = answered["messages"]
    assert message["message_id"] == sent["message_id"] and message["body"] == {"hello": "world"}
    assert message["deliveries"] == 1 and message["sender_agent"] == "writer"
    # Woken by the send, not by the end of its 20 s wait.
    assert answered["at"] - sent_at < 2.0


async def test_another_tenant_can_neither_see_nor_receive(app: App) -> None:
    ensure_tenant(app.store, "other")
    async with mcp_client(app) as ours, mcp_client(app, "other") as theirs:
        sent = await call(ours, "channel_send", channel="jobs", body="ours")
        assert (await call(theirs, "channel_list"))["channels"] == []
        assert (await call(theirs, "channel_receive", channel="jobs", wait_s=0.2))["messages"] == []
        assert "no channel 'jobs'" in await call_error(theirs, "channel_describe", channel="jobs")
        receipt = (await call(ours, "channel_receive", channel="jobs", lease_s=0.1))["messages"][0]["receipt"]
        assert "no channel 'jobs'" in await call_error(theirs, "channel_ack", channel="jobs", receipts=[receipt])
        assert (await call(theirs, "channel_delete", channel="jobs"))["deleted"] is False

        # Their own 'jobs' is another channel: each side gets only its own messages.
        await call(theirs, "channel_send", channel="jobs", body="theirs")
        mine = await call(ours, "channel_receive", channel="jobs", wait_s=5)
        others = await call(theirs, "channel_receive", channel="jobs")
        assert [m["message_id"] for m in mine["messages"]] == [sent["message_id"]]
        assert [m["body"] for m in others["messages"]] == ["theirs"]
        assert (await call(theirs, "channel_delete", channel="jobs"))["deleted"] is True
        assert (await call(ours, "channel_describe", channel="jobs"))["in_flight"] == 1


async def test_fifo_dedupe_and_the_quotas_on_size_depth_and_count(app: App) -> None:
    async with mcp_client(app) as client:
        ids = [(await call(client, "channel_send", channel="q", body={"n": n}))["message_id"] for n in range(4)]
        first = await call(client, "channel_send", channel="q", body={"n": 4}, dedupe_key="k")
        again = await call(client, "channel_send", channel="q", body={"n": 4}, dedupe_key="k")
        assert first["duplicate"] is False and again == {**first, "duplicate": True} | {
            k: again[k] for k in ("task_id", "cost")
        }
        got = await call(client, "channel_receive", channel="q", max_messages=10)
        assert [m["message_id"] for m in got["messages"]] == [*ids, first["message_id"]]
        assert [m["body"]["n"] for m in got["messages"]] == [0, 1, 2, 3, 4]

        too_big = await call_error(client, "channel_send", channel="q", body="x" * (256 * 1024))
        assert "bytes of JSON, more than the 262144 a message may carry" in too_big

        set_quotas(app, "local", max_channel_depth=5, max_live_channels=1, max_channel_retention_s=3600)
        full = await call_error(client, "channel_send", channel="q", body="one more")
        assert "holds 5 messages, your quota's most" in full
        count = await call_error(client, "channel_send", channel="another", body=1)
        assert "live channels, your quota's most" in count and "channel_delete" in count
        set_quotas(app, "local", max_channel_retention_s=3600)
        long = await call_error(client, "channel_create", channel="long", retention_s=7200)
        assert "past your quota's most, 3600 s" in long

        made = await call(client, "channel_create", channel="short", max_deliveries=2, retention_s=600)
        same = await call(client, "channel_create", channel="short", max_deliveries=2, retention_s=600)
        assert made["created"] is True and same["created"] is False and same["channel_id"] == made["channel_id"]
        assert "exists with max_deliveries=2" in await call_error(client, "channel_create", channel="short")
        bad = await call_error(client, "channel_send", channel="no spaces", body=1)
        assert "invalid arguments" in bad and "`channel`" in bad


async def test_unacked_messages_come_back_with_their_count_then_go_to_the_dead_letters(app: App) -> None:
    async with mcp_client(app) as client:
        await call(client, "channel_create", channel="work", max_deliveries=2)
        await call(client, "channel_send", channel="work", body="flaky")
        with anyio.fail_after(10):
            one = (await call(client, "channel_receive", channel="work", lease_s=0.2))["messages"][0]
            # Waits for the lease to run out, not for wait_s.
            two = (await call(client, "channel_receive", channel="work", wait_s=8, lease_s=0.2))["messages"][0]
        assert (one["deliveries"], two["deliveries"]) == (1, 2) and one["receipt"] != two["receipt"]
        late = await call(client, "channel_ack", channel="work", receipts=[one["receipt"]])
        assert late["acked"] == 0 and late["not_acked"] == [one["receipt"]]

        await until(lambda: lease_ended(app, two["message_id"]), "the second lease to run out")
        await channels(app).reap()
        described = await call(client, "channel_describe", channel="work")
        assert (described["depth"], described["in_flight"], described["dead_letters"]) == (0, 0, 1)
        assert (await call(client, "channel_receive", channel="work"))["messages"] == []

        dead = (await call(client, "channel_receive", channel="work", dead_letters=True))["messages"]
        assert [m["body"] for m in dead] == ["flaky"] and dead[0]["deliveries"] == 3
        acked = await call(client, "channel_ack", channel="work", receipts=[dead[0]["receipt"]])
        assert acked == {**acked, "acked": 1, "not_acked": []}
        empty = await call(client, "channel_describe", channel="work")
        assert (empty["dead_letters"], empty["stored_bytes"], empty["oldest_age_s"]) == (0, 0, None)


def lease_ended(app: App, message_id: str) -> bool:
    with app.store.transaction() as session:
        message = session.scalar(select(ChannelMessage).where(ChannelMessage.id == message_id))
        assert message is not None
        return message.visible_at.timestamp() <= time.time()


async def test_storage_is_billed_on_a_lease_and_old_messages_expire(app: App) -> None:
    async with mcp_client(app) as client:
        sent = await call(client, "channel_send", channel="big", body="x" * 200_000)
        for _ in range(5):
            await call(client, "channel_send", channel="big", body="x" * 200_000)
        channel_id = (await call(client, "channel_describe", channel="big"))["channel_id"]
        lease = lease_of(app, channel_id)
        assert lease.kind == "channel" and lease.rate == {"channel.storage_mib_ms": 2000} and lease.ended_at is None
        with app.store.transaction() as session:
            fees = session.scalars(select(LedgerEntry.amount_micros).where(LedgerEntry.task_id == sent["task_id"]))
            assert list(fees) == [10]

        # Past its retention, the reaper removes a message and the lease bills less.
        with app.store.transaction() as session:
            session.execute(
                update(ChannelMessage)
                .where(ChannelMessage.id == sent["message_id"])
                .values(expires_at=ChannelMessage.sent_at)
            )
        assert await channels(app).reap() == [channel_id]
        assert lease_of(app, channel_id).rate == {"channel.storage_mib_ms": 1000}
        described = await call(client, "channel_describe", channel="big")
        assert (described["depth"], described["stored_bytes"]) == (5, 5 * 200_002)

        await call(client, "channel_delete", channel="big")
        ended = lease_of(app, channel_id)
        assert ended.ended_at is not None and ended.end_reason == "deleted"
        assert (await call(client, "channel_list"))["channels"] == []
        assert (await call(client, "channel_delete", channel="big"))["deleted"] is False


async def test_a_delete_asks_to_confirm_naming_the_channel(settings: Settings) -> None:
    asking = App(load_settings(auto_confirm=False), DockerDriver("unix:///nonexistent/docker.sock"))
    questions: list[str] = []

    async def decline(context: Any, params: Any) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action="decline")

    async with asking.running(serving=False), mcp_client(asking, elicitation_callback=decline) as client:
        await call(client, "channel_send", channel="keep", body="precious")
        refused = await call_error(client, "channel_delete", channel="keep")
        assert "was not confirmed, so nothing was changed" in refused
        assert questions == ["channel_delete (channel=keep) destroys data for good. Go ahead?"]
        assert (await call(client, "channel_describe", channel="keep"))["depth"] == 1
    asking.close()


def lease_of(app: App, resource_id: str) -> Lease:
    with app.store.transaction() as session:
        lease = session.get(Lease, resource_id)
        assert lease is not None
        return lease


async def test_messages_in_flight_and_dedupe_keys_survive_a_restart(settings: Settings) -> None:
    docker = DockerDriver("unix:///nonexistent/docker.sock")
    first = App(settings, docker)
    async with first.running(serving=False), mcp_client(first) as client:
        sent = [(await call(client, "channel_send", channel="durable", body=n))["message_id"] for n in range(3)]
        await call(client, "channel_send", channel="durable", body="once", dedupe_key="once")
        held = (await call(client, "channel_receive", channel="durable", lease_s=600))["messages"][0]
    first.close()

    second = App(settings, docker)
    async with second.running(), mcp_client(second) as client:
        described = await call(client, "channel_describe", channel="durable")
        assert (described["depth"], described["in_flight"]) == (3, 1)
        again = await call(client, "channel_send", channel="durable", body="once", dedupe_key="once")
        assert again["duplicate"] is True
        rest = await call(client, "channel_receive", channel="durable", max_messages=10)
        assert [m["message_id"] for m in rest["messages"]][:2] == sent[1:]
        assert (await call(client, "channel_ack", channel="durable", receipts=[held["receipt"]]))["acked"] == 1
        await call(client, "channel_delete", channel="durable")
    second.close()


async def test_receives_past_the_waiting_cap_answer_at_once(app: App) -> None:
    manager = channels(app)
    manager.max_waiting = 1
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(manager.receive, "local", "capped", 1, 20.0, 30.0)
            await until(lambda: manager.bells.waiting(bell("local", "capped")) == 1, "the first receive to wait")
            started = time.perf_counter()
            assert await manager.receive("local", "capped", 1, 20.0, 30.0) == []
            assert time.perf_counter() - started < 2.0
            group.cancel_scope.cancel()


# A MiB of channel storage holding 1000 micro-units per 300 s lease: leases that matter.
COSTLY_STORAGE = """
version = "test-channels"
currency = "USD"
[task_fee]
default = 10
[resources.channel]
storage_gib_hour = 12288000
"""


@pytest.fixture
async def costly_app(settings: Settings, tmp_path: Path) -> AsyncIterator[App]:
    prices = tmp_path / "prices.toml"
    prices.write_text(COSTLY_STORAGE)
    application = App(
        load_settings(prices_file=prices, auto_confirm=True), DockerDriver("unix:///nonexistent/docker.sock")
    )
    async with application.running(serving=False):
        yield application
    application.close()


async def test_out_of_budget_a_channel_stops_taking_sends_but_can_be_drained(costly_app: App) -> None:
    app = costly_app
    async with mcp_client(app) as client:
        await call(client, "channel_send", channel="paid", body="kept")
        channel_id = (await call(client, "channel_describe", channel="paid"))["channel_id"]
        assert lease_of(app, channel_id).held_micros == 1000
        # An operator lowers the budget below what the lease holds: the renewal loop cannot
        # hold the next lease, so billing ends and the kind is told to stop the channel.
        update_tenant(app.store, "local", budget_micros=spent_and_held(app) - 500)
        exhausted = [e.resource_id for e in app.leases.renew_due(within_s=2 * app.leases.lease_s)]
        assert exhausted == [channel_id]
        await channels(app).stop_for_budget(channel_id)

        assert (await call(client, "channel_describe", channel="paid"))["state"] == "stopped"
        refused = await call_error(client, "channel_send", channel="paid", body="more")
        assert "channel 'paid' is stopped, its messages kept, because the budget ran out" in refused
        got = (await call(client, "channel_receive", channel="paid"))["messages"]
        assert [m["body"] for m in got] == ["kept"]
        assert (await call(client, "channel_ack", channel="paid", receipts=[got[0]["receipt"]]))["acked"] == 1
        assert [c["state"] for c in (await call(client, "channel_list"))["channels"]] == ["stopped"]

        update_tenant(app.store, "local", budget_micros=None)
        await call(client, "channel_send", channel="paid", body="again")
        assert (await call(client, "channel_describe", channel="paid"))["state"] == "live"
        assert lease_of(app, channel_id).ended_at is None
        assert (await call(client, "channel_delete", channel="paid"))["deleted"] is True
    with app.store.transaction() as session:
        assert session.scalar(select(Channel.state).where(Channel.id == channel_id)) == "deleted"


def spent_and_held(app: App) -> int:
    with app.store.transaction() as session:
        tenant = session.get(Tenant, "local")
        assert tenant is not None
        return tenant.spent_micros + tenant.held_micros
