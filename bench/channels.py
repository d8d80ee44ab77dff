"""Channels: send-to-receive latency with a receiver waiting, and messages per second
with 4 senders and 4 receivers, against a bare insert-and-select loop on the same
SQLite store, in the same run.

    .venv/bin/python -m bench.channels [--rounds 200] [--messages 2000]

Latency is from the start of the send to the waiting receive's answer:

- in process, through the call path (each call a task: admission, settlement, ledger)
  and through the channel manager alone (the skill's own work);
- over MCP stdio, from a fresh `cloudskills serve` process: one session, a receive
  waiting while the same session sends.

Throughput: 4 senders and 4 receivers (10 messages a receive, each batch acked) in
process, through the call path and through the manager. The baseline does the least
any durable handoff must: one transaction inserts the message, another selects and
deletes it (latency), or batches of 10 (throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from sqlalchemy import text

from bench.common import summary
from runtime.app import App
from runtime.settings import load_settings
from sandbox.docker import DockerDriver
from scheduler.models import Tenant
from skills.channel.channels import ChannelManager, bell

SENDERS = RECEIVERS = 4
BATCH = 10


def offline_app(home: str) -> App:
    os.environ["CLOUDSKILLS_HOME"] = home
    app = App(load_settings(pool_size=0, auto_confirm=True), DockerDriver("unix:///nonexistent/docker.sock"))
    with app.store.transaction() as session:
        tenant = session.get(Tenant, "local")
        assert tenant is not None
        tenant.max_concurrent_tasks = tenant.tasks_per_minute = 10**9
        tenant.quotas = {"max_channel_depth": 10**9}
    return app


async def waited(
    manager: ChannelManager, receive: Callable[[], Awaitable[Any]], send: Callable[[], Awaitable[Any]], key: str
) -> float:
    """Milliseconds from the send's start to the answer of a receive already waiting."""
    answered: list[float] = []

    async def receiver() -> None:
        await receive()
        answered.append(time.perf_counter())

    async with anyio.create_task_group() as group:
        group.start_soon(receiver)
        while not manager.bells.waiting(key):  # noqa: ASYNC110 - a bench, outside the measured span
            await anyio.sleep(0.0005)
        start = time.perf_counter()
        await send()
    return (answered[0] - start) * 1000


async def latency_in_process(app: App, rounds: int) -> tuple[list[float], list[float]]:
    manager = app.service(ChannelManager)
    key = bell("local", "lat")
    receipts: list[str] = []

    async def receive_call() -> None:
        got = await app.call("local", "channel_receive", {"channel": "lat", "wait_s": 10})
        receipts.extend(m["receipt"] for m in got.unwrap()["messages"])

    async def send_call() -> None:
        await app.call("local", "channel_send", {"channel": "lat", "body": {"n": len(receipts)}})

    async def receive_direct() -> None:
        receipts.extend(d.receipt for d in await manager.receive("local", "lat", 1, 10.0, 30.0))

    async def send_direct() -> None:
        manager.send("local", "lat", str(len(receipts)), None, None)

    through_calls, manager_only = [], []
    for _ in range(rounds):
        through_calls.append(await waited(manager, receive_call, send_call, key))
        await app.call("local", "channel_ack", {"channel": "lat", "receipts": receipts[-1:]})
        manager_only.append(await waited(manager, receive_direct, send_direct, key))
        manager.ack("local", "lat", receipts[-1:])
    return through_calls, manager_only


async def latency_over_stdio(home: str, rounds: int) -> tuple[float, list[float]]:
    """The first exchange of a fresh server, then ``rounds`` more."""
    env = {**os.environ, "CLOUDSKILLS_HOME": home, "CLOUDSKILLS_POOL_SIZE": "0", "CLOUDSKILLS_AUTO_CONFIRM": "true"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    samples = []
    answered: list[float] = []
    async with Client(params) as client:

        async def receiver() -> None:
            got = await client.call_tool("channel_receive", {"channel": "lat", "wait_s": 10})
            answered.append(time.perf_counter())
            receipts = [m["receipt"] for m in (got.structured_content or {})["messages"]]
            await client.call_tool("channel_ack", {"channel": "lat", "receipts": receipts})

        for n in range(rounds + 1):
            async with anyio.create_task_group() as group:
                group.start_soon(receiver)
                await anyio.sleep(0.02)  # the server cannot be watched from here: let the receive start waiting
                start = time.perf_counter()
                await client.call_tool("channel_send", {"channel": "lat", "body": {"n": n}})
            samples.append((answered[-1] - start) * 1000)
    return samples[0], samples[1:]


async def throughput(
    messages: int, send: Callable[[int], Awaitable[None]], receive: Callable[[], Awaitable[int]]
) -> float:
    """Messages per second, 4 senders and 4 receivers at once, until every message is received."""
    received = 0

    async def sender(part: int) -> None:
        for n in range(part, messages, SENDERS):
            await send(n)

    async def receiver(done: anyio.Event) -> None:
        nonlocal received
        while received < messages:
            got = await receive()
            received += got  # after the await: another receiver may have counted meanwhile
        done.set()

    start = time.perf_counter()
    done = anyio.Event()
    async with anyio.create_task_group() as group:
        for part in range(SENDERS):
            group.start_soon(sender, part)
        for _ in range(RECEIVERS):
            group.start_soon(receiver, done)
        await done.wait()
        group.cancel_scope.cancel()
    return messages / (time.perf_counter() - start)


async def throughput_in_process(app: App, messages: int) -> tuple[float, float]:
    manager = app.service(ChannelManager)

    async def send_call(n: int) -> None:
        await app.call("local", "channel_send", {"channel": "tput", "body": {"n": n}})

    async def receive_call() -> int:
        got = await app.call("local", "channel_receive", {"channel": "tput", "max_messages": BATCH, "wait_s": 1})
        receipts = [m["receipt"] for m in got.unwrap()["messages"]]
        if receipts:
            await app.call("local", "channel_ack", {"channel": "tput", "receipts": receipts})
        return len(receipts)

    async def send_direct(n: int) -> None:
        manager.send("local", "tput2", str(n), None, None)
        await anyio.lowlevel.checkpoint()

    async def receive_direct() -> int:
        receipts = [d.receipt for d in await manager.receive("local", "tput2", BATCH, 1.0, 30.0)]
        if receipts:
            manager.ack("local", "tput2", receipts)
        return len(receipts)

    return await throughput(messages, send_call, receive_call), await throughput(messages, send_direct, receive_direct)


def bare_loop(app: App, rounds: int, messages: int) -> tuple[list[float], float]:
    """Insert a row in one transaction, select and delete it in another: per message (ms),
    then ``messages`` in batches of 10 (messages/s)."""
    with app.store.transaction() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS bench_handoff (id INTEGER PRIMARY KEY, body TEXT)"))
    samples = []
    for n in range(rounds):
        start = time.perf_counter()
        with app.store.transaction() as session:
            session.execute(text("INSERT INTO bench_handoff (body) VALUES (:body)"), {"body": f'{{"n":{n}}}'})
        with app.store.transaction() as session:
            row = session.execute(text("SELECT id, body FROM bench_handoff ORDER BY id LIMIT 1")).one()
            session.execute(text("DELETE FROM bench_handoff WHERE id = :id"), {"id": row.id})
        samples.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    for first in range(0, messages, BATCH):
        for n in range(first, first + BATCH):
            with app.store.transaction() as session:
                session.execute(text("INSERT INTO bench_handoff (body) VALUES (:body)"), {"body": f'{{"n":{n}}}'})
        with app.store.transaction() as session:
            rows = session.execute(text("SELECT id FROM bench_handoff ORDER BY id LIMIT :n"), {"n": BATCH}).all()
            session.execute(text("DELETE FROM bench_handoff WHERE id <= :last"), {"last": rows[-1].id})
    return samples, messages / (time.perf_counter() - start)


async def in_process(home: str, rounds: int, messages: int) -> dict[str, Any]:
    app = offline_app(home)
    try:
        async with app.running(serving=False):
            calls, manager = await latency_in_process(app, rounds)
            through_calls, through_manager = await throughput_in_process(app, messages)
        bare, bare_rate = bare_loop(app, rounds, messages)
    finally:
        app.close()
    return {
        "calls": calls,
        "manager": manager,
        "tput_calls": through_calls,
        "tput_manager": through_manager,
        "bare": bare,
        "bare_rate": bare_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as served:
        found = anyio.run(in_process, local, args.rounds, args.messages)
        first, stdio = anyio.run(latency_over_stdio, served, args.rounds)
    bare = statistics.median(found["bare"])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(summary("send->receive, in process (call path)", found["calls"]))
    print(summary("send->receive, in process (manager)", found["manager"]))
    print(summary("send->receive, MCP stdio", stdio) + f"  first={first:.1f} ms")
    print(summary("baseline: insert, then select+delete", found["bare"]))
    print(
        f"ratio p50 call path/baseline {statistics.median(found['calls']) / bare:.2f}, "
        f"manager/baseline {statistics.median(found['manager']) / bare:.2f}, "
        f"stdio/baseline {statistics.median(stdio) / bare:.2f}"
    )
    print(
        f"messages/s, {SENDERS} senders + {RECEIVERS} receivers, {args.messages} messages: "
        f"call path {found['tput_calls']:.0f}, manager {found['tput_manager']:.0f}, "
        f"baseline (insert each, select+delete by {BATCH}) {found['bare_rate']:.0f}"
    )
    print(
        f"ratio messages/s call path/baseline {found['tput_calls'] / found['bare_rate']:.2f}, "
        f"manager/baseline {found['tput_manager'] / found['bare_rate']:.2f}"
    )


if __name__ == "__main__":
    main()
