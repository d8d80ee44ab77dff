"""Agents that work together over MCP (issue 15): a planner and two workers, each an MCP
session as its own agent of one tenant, coordinating over channels and leaving their
results in a shared workspace, one of them from inside a sandbox that mounts it.

The other tests the issue names live beside their skills: a receive woken by a send from
another session (test_channel_skill.py), and another tenant that can neither see nor
receive (test_channel_skill.py) nor see, read or mount a workspace (test_workspace_skill.py).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
import pytest
from mcp import Client

from runtime.app import App
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

JOBS = 50
# Long enough for a job in a sandbox on a loaded machine, short enough to wait out a killed worker's.
LEASE_S = 5.0


async def test_a_planner_and_two_workers_share_a_workspace_and_redo_a_killed_workers_job(app: App) -> None:
    """The planner sends 50 jobs; the workers receive one at a time, write the result into the
    shared workspace (worker a through workspace_write_file, worker b from its sandbox, which
    mounts the workspace) and ack. Worker a is killed mid-job: its session goes away holding
    a job it never acked, and that job is delivered again to worker b after its lease."""
    killed: list[dict[str, Any]] = []
    a_holds_a_job = anyio.Event()
    all_done = anyio.Event()

    async def do(client: Client, ws: str, name: str, job: dict[str, Any], sandbox_id: str | None) -> None:
        n = job["body"]["job"]
        result = {"job": n, "square": n * n, "worker": name, "deliveries": job["deliveries"]}
        path = f"results/job-{n}-{name}-{job['deliveries']}.json"
        if sandbox_id is None:
            await call(client, "workspace_write_file", workspace_id=ws, path=path, content=json.dumps(result))
        else:
            command = f"mkdir -p /mnt/shared/results && echo '{json.dumps(result)}' > /mnt/shared/{path}"
            ran = await call(client, "sandbox_exec", sandbox_id=sandbox_id, command=command)
            assert ran["exit_code"] == 0, ran["stderr"]
        await call(client, "channel_ack", channel="jobs", receipts=[job["receipt"]])
        await call(client, "channel_send", channel="done", body={"job": n})

    async def worker(name: str, ws: str, in_sandbox: bool, die_at: int | None = None) -> None:
        async with mcp_client(app, agent=f"worker-{name}") as client:
            sandbox_id = None
            if in_sandbox:
                mount = {"workspace_id": ws, "path": "/mnt/shared"}
                sandbox_id = (await call(client, "sandbox_create", template="bash", workspaces=[mount]))["sandbox_id"]
            try:
                done = 0
                while not all_done.is_set():
                    got = await call(client, "channel_receive", channel="jobs", wait_s=2, lease_s=LEASE_S)
                    for job in got["messages"]:
                        assert job["sender_agent"] == "planner"
                        if done == die_at:
                            killed.append(job)
                            a_holds_a_job.set()
                            await anyio.sleep_forever()  # mid-job, until its task group is cancelled
                        await do(client, ws, name, job, sandbox_id)
                        done += 1
            finally:
                if sandbox_id is not None:
                    with anyio.CancelScope(shield=True):
                        await call(client, "sandbox_destroy", sandbox_id=sandbox_id)

    with anyio.fail_after(180):
        async with mcp_client(app, agent="planner") as planner:
            ws = (await call(planner, "workspace_create", name="shared", size_mib=32))["workspace_id"]
            async with anyio.create_task_group() as workers:
                async with anyio.create_task_group() as worker_a:
                    worker_a.start_soon(worker, "a", ws, False, 2)
                    workers.start_soon(worker, "b", ws, True)
                    for n in range(JOBS):
                        await call(planner, "channel_send", channel="jobs", body={"job": n}, dedupe_key=f"job-{n}")
                    await a_holds_a_job.wait()
                    worker_a.cancel_scope.cancel()  # worker a is killed: its session ends, the job unacked
                done: list[int] = []
                while len(done) < JOBS:
                    got = await call(planner, "channel_receive", channel="done", max_messages=50, wait_s=10)
                    done += [message["body"]["job"] for message in got["messages"]]
                    if got["messages"]:
                        receipts = [message["receipt"] for message in got["messages"]]
                        await call(planner, "channel_ack", channel="done", receipts=receipts)
                all_done.set()
            listed = await call(planner, "workspace_list_files", workspace_id=ws, path="results")
            files = [entry["name"] for entry in listed["entries"]]
            results = [
                json.loads(
                    (await call(planner, "workspace_read_file", workspace_id=ws, path=f"results/{f}"))["content"]
                )
                for f in files
            ]
            jobs = await call(planner, "channel_describe", channel="jobs")
            await call(planner, "workspace_delete", workspace_id=ws)

    assert Counter(done) == Counter(range(JOBS)), "every job reported done exactly once"
    assert Counter(r["job"] for r in results) == Counter(range(JOBS)), "every job in the results exactly once"
    assert all(r["square"] == r["job"] ** 2 for r in results)
    assert (jobs["depth"], jobs["in_flight"], jobs["dead_letters"]) == (0, 0, 0)
    (lost,) = killed
    redone = next(r for r in results if r["job"] == lost["body"]["job"])
    assert lost["deliveries"] == 1
    assert redone == {"job": lost["body"]["job"], "square": lost["body"]["job"] ** 2, "worker": "b", "deliveries": 2}
    by = Counter(r["worker"] for r in results)
    assert by["a"] == 2 and by["b"] == JOBS - 2, "worker a did two jobs before it was killed, worker b the rest"
