"""Pause and resume (issue 17) on real Docker sandboxes under gVisor: a paused sandbox is a
checkpoint on disk, billed for its disk only, answering nothing but describe, resume and
destroy; it comes back with its interpreter's variables, its files and its background
processes, after a server restart too, and more than once. Where the runtime cannot
checkpoint (runc here), the error says why and the sandbox runs on."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import pytest
from mcp.client.client import Client

from common.errors import NotFound
from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import update_tenant
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_SANDBOX
from scheduler.models import Lease, Tenant
from skills.sandbox.manager import SandboxManager
from skills.sandbox.pausing import CHECKPOINT_GRACE_S
from skills.sandbox.records import DISK_METER
from skills.sandbox.rows import Sandbox
from tests.conftest import containers_of
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TICKER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done"


def lease_of(app: App, sandbox_id: str) -> Lease:
    with app.store.transaction() as session:
        lease = session.get(Lease, sandbox_id)
        assert lease is not None
        session.expunge(lease)
        return lease


async def ticks(client: Client, sid: str) -> int:
    """The ticker's count; 0 before its first tick (a background process just started, on a
    loaded machine, may not have written yet)."""
    result = await client.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "/tmp/ticks"})
    if result.is_error:
        assert "no file /tmp/ticks" in result.content[0].text  # type: ignore[union-attr]
        return 0
    return int((result.structured_content or {})["content"].strip() or 0)


async def ticking(client: Client, sid: str) -> None:
    """The background ticker moves on (it runs, rather than having been started again)."""
    first = await ticks(client, sid)
    with anyio.fail_after(30):
        while await ticks(client, sid) <= first:  # noqa: ASYNC110 - it ticks every 0.2 s
            await anyio.sleep(0.1)


async def test_a_gvisor_sandbox_pauses_to_disk_and_resumes_as_it_was_across_a_restart(
    settings: Settings, docker_driver: DockerDriver
) -> None:
    first = App(settings, docker_driver)
    async with first.running(), mcp_client(first) as client:
        sid = (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(
            client, "sandbox_run_code", sandbox_id=sid, code="kept = 41\nopen('/work/note', 'w').write('on disk')"
        )
        ticker = await call(client, "sandbox_exec", sandbox_id=sid, command=TICKER, background=True)
        await ticking(client, sid)

        paused = await call(client, "sandbox_pause", sandbox_id=sid)
        assert paused["state"] == "paused" and paused["paused_at"] and paused["checkpoint_mib"] > 0, paused
        (container,) = docker_driver.list_labelled({LABEL_SANDBOX: sid})
        assert docker_driver.exit_of(container.container_id) is not None  # stopped
        described = await call(client, "sandbox_describe", sandbox_id=sid)
        assert (described["state"], described["processes"], described["memory_bytes"]) == ("paused", [], None)
        assert described["paused_at"] == paused["paused_at"]
        listed = (await call(client, "sandbox_list"))["sandboxes"]
        assert [(s["sandbox_id"], s["state"]) for s in listed] == [(sid, "paused")]
        refused = await call_error(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)")
        assert "is paused" in refused and "sandbox_resume" in refused, refused
        again = await call(client, "sandbox_pause", sandbox_id=sid)  # a paused one stays paused
        assert (again["state"], again["paused_at"]) == ("paused", paused["paused_at"])
        lease = lease_of(first, sid)  # its disk and checkpoint only, while paused
        assert (lease.op, set(lease.rate)) == ("paused", {DISK_METER}), lease.rate
    first.close()

    second = App(settings, DockerDriver())  # a new process: nothing of the first is held
    async with second.running(), mcp_client(second) as client:
        resumed = await call(client, "sandbox_resume", sandbox_id=sid)
        assert (resumed["state"], resumed["paused_at"]) == ("running", None)
        out = await call(client, "sandbox_run_code", sandbox_id=sid, code="kept += 1\nprint(kept, open('note').read())")
        assert out["stdout"] == "42 on disk\n", out
        processes = (await call(client, "sandbox_process_list", sandbox_id=sid))["processes"]
        assert [(p["process_id"], p["running"]) for p in processes] == [(ticker["process_id"], True)]
        await ticking(client, sid)
        lease = lease_of(second, sid)
        assert lease.op == "lifetime" and "sandbox.vcpu_ms" in lease.rate

        # A second pause of the restored sandbox (gVisor 20221219 leaves state behind here).
        await call(client, "sandbox_pause", sandbox_id=sid)
        await call(client, "sandbox_resume", sandbox_id=sid)
        assert (await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)"))["stdout"] == "42\n"
        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"  # runs: left so

        await call(client, "sandbox_pause", sandbox_id=sid)
        assert (await call(client, "sandbox_destroy", sandbox_id=sid))["destroyed"] is True  # paused: destroyable
        assert docker_driver.list_labelled({LABEL_SANDBOX: sid}) == []
        disks = second.docker.disks
        assert disks is None or f"cloudskills-{sid}" not in disks.kept_names()
    assert containers_of(docker_driver, second) == []
    second.close()


async def test_runc_says_why_it_cannot_pause_and_the_sandbox_runs_on(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="kept = 42")
        message = await call_error(client, "sandbox_pause", sandbox_id=sid)
        assert message.startswith("this sandbox cannot pause: ") and "CRIU" in message, message
        assert "python-gvisor" in message and "runs on untouched" in message
        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        assert (await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)"))["stdout"] == "42\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)


async def state_of(client: Client, sid: str) -> Any:
    result = await client.call_tool("sandbox_describe", {"sandbox_id": sid})
    return result.content[0].text if result.is_error else result.structured_content["state"]  # type: ignore[union-attr]


async def test_an_idle_sandbox_pauses_at_its_ttl_and_is_destroyed_after_the_retention(
    settings: Settings, docker_driver: DockerDriver
) -> None:
    settings = settings.model_copy(update={"sandbox_idle_pause": True, "sandbox_paused_retention_s": 4.0})
    app = App(settings, docker_driver)
    async with app.running(), mcp_client(app) as client:
        gvisor = (await call(client, "sandbox_create", template="python-gvisor", ttl_s=10))["sandbox_id"]
        runc = (await call(client, "sandbox_create", template="python", ttl_s=10))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=gvisor, code="kept = 7")
        with anyio.fail_after(60):
            while (await state_of(client, gvisor)) != "paused":  # noqa: ASYNC110 - the reaper's pass
                await anyio.sleep(0.2)
        # It did not pause because it was used: describe never counts as use.
        with anyio.fail_after(60):
            while (state := await state_of(client, runc)) == "running":  # noqa: ASYNC110 - the reaper's pass
                await anyio.sleep(0.2)
        assert "expired" in state, state  # runc cannot pause: it ended at its ttl_s as ever
        with anyio.fail_after(60):
            while (state := await state_of(client, gvisor)) == "paused":  # noqa: ASYNC110 - the reaper's pass
                await anyio.sleep(0.2)
        assert "destroyed after staying paused" in state, state
    assert containers_of(docker_driver, app) == []  # the pool drained, the paused one removed
    app.close()


def started_in(docker_driver: DockerDriver, sid: str, path: str) -> bool:
    """Whether a file exists in the sandbox, asked through the engine (the agent is busy)."""
    (container,) = docker_driver.list_labelled({LABEL_SANDBOX: sid})
    return subprocess.run(["docker", "exec", container.container_id, "test", "-e", path], check=False).returncode == 0


async def test_a_pause_during_a_long_call_answers_it_and_the_sandbox_resumes(
    app: App, docker_driver: DockerDriver
) -> None:
    async with mcp_client(app) as first, mcp_client(app) as second:
        sid = (await call(first, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(first, "sandbox_run_code", sandbox_id=sid, code="kept = 5")
        answered: list[str] = []

        async def long_call() -> None:
            command = "touch /tmp/started; sleep 45; echo done"
            answered.append(await call_error(first, "sandbox_exec", sandbox_id=sid, command=command, timeout_s=120))

        async with anyio.create_task_group() as group:
            group.start_soon(long_call)
            await until(partial(started_in, docker_driver, sid, "/tmp/started"), "the long call to start")
            assert (await call(second, "sandbox_pause", sandbox_id=sid))["state"] == "paused"
        (message,) = answered
        assert "is paused" in message and "while this call ran" in message, message
        lease = lease_of(app, sid)
        assert (lease.op, set(lease.rate)) == ("paused", {DISK_METER}), lease.rate

        # The call in flight comes back with the sandbox and runs on to its end: the
        # sandbox is busy a while, not broken.
        assert (await call(second, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        assert lease_of(app, sid).op == "lifetime"
        out = await call(second, "sandbox_run_code", sandbox_id=sid, code="print(kept)", timeout_s=120)
        assert out["stdout"] == "5\n", out
        await call(second, "sandbox_destroy", sandbox_id=sid)


def leave_in_budget(app: App, micros: int) -> None:
    """Set the tenant's budget so that ``micros`` is left beyond what it has spent and holds."""
    with app.store.transaction() as session:
        tenant = session.get(Tenant, app.settings.tenant)
        assert tenant is not None
        used = tenant.spent_micros + tenant.held_micros
    update_tenant(app.store, app.settings.tenant, budget_micros=used + micros)


async def test_a_sandbox_pauses_out_of_budget_and_stays_paused_until_its_lease_is_covered(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="kept = 9")
        running_hold = lease_of(app, sid).held_micros
        update_tenant(app.store, app.settings.tenant, budget_micros=1)  # spent: nothing left at all

        # A pause only lowers what it spends: never refused for money.
        assert (await call(client, "sandbox_pause", sandbox_id=sid))["state"] == "paused"
        lease = lease_of(app, sid)
        assert (lease.op, set(lease.rate), lease.ended_at) == ("paused", {DISK_METER}, None), lease

        # It ran out at the paused rate under the hold it had; with money again, it runs.
        update_tenant(app.store, app.settings.tenant, budget_micros=None)
        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        await call(client, "sandbox_pause", sandbox_id=sid)

        # Enough for the call, not for a lease at the running rate: refused, and it stays paused.
        leave_in_budget(app, running_hold // 2)
        message = await call_error(client, "sandbox_resume", sandbox_id=sid)
        assert "budget" in message and "stays paused" in message, message
        assert (await call(client, "sandbox_describe", sandbox_id=sid))["state"] == "paused"
        lease = lease_of(app, sid)
        assert (lease.op, set(lease.rate), lease.ended_at) == ("paused", {DISK_METER}, None), lease

        update_tenant(app.store, app.settings.tenant, budget_micros=None)
        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        assert (await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)"))["stdout"] == "9\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)


async def test_a_pause_or_resume_that_lost_a_race_to_another_leaves_the_sandbox_as_that_one_did(app: App) -> None:
    manager = app.service(SandboxManager)
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="kept = 3")
        # Each read its record before the other pause (or resume) ran start to end.
        running = manager.get(app.settings.tenant, sid, paused_ok=True)
        paused = await call(client, "sandbox_pause", sandbox_id=sid)
        stale_paused = manager.get(app.settings.tenant, sid, paused_ok=True)
        assert (await manager.pausing.pause(running)).state == "paused"
        described = await call(client, "sandbox_describe", sandbox_id=sid)
        assert (described["state"], described["paused_at"]) == ("paused", paused["paused_at"])

        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        assert (await manager.pausing.resume(stale_paused)).state == "running"
        assert lease_of(app, sid).op == "lifetime"
        assert (await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)"))["stdout"] == "3\n"
        before_destroy = manager.get(app.settings.tenant, sid, paused_ok=True)
        await call(client, "sandbox_destroy", sandbox_id=sid)
        with pytest.raises(NotFound):
            await manager.pausing.pause(before_destroy)
        assert manager.row(sid).state == "destroyed"


async def test_what_a_server_killed_midway_left_is_settled_by_the_next(
    settings: Settings, docker_driver: DockerDriver
) -> None:
    first = App(settings, docker_driver)
    async with first.running(), mcp_client(first) as client:
        marked, restoring = [
            (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"] for _ in "ab"
        ]
        for sid in (marked, restoring):
            await call(client, "sandbox_run_code", sandbox_id=sid, code=f"kept = {sid!r}")
        await call(client, "sandbox_pause", sandbox_id=restoring)
        paused_rate = lease_of(first, restoring).rate
        # The books as a process killed at those points leaves them: marked paused, never
        # checkpointed; marked resuming, never restored.
        pausing = first.service(SandboxManager).pausing
        pausing._set(marked, "paused", estimate=True)
        pausing._set_resuming(restoring)
        with first.store.transaction() as session:  # long enough ago for any checkpoint to have ended
            row = session.get(Sandbox, marked)
            assert row is not None and row.paused_at is not None
            row.paused_at -= timedelta(seconds=CHECKPOINT_GRACE_S + 1)
    first.close()

    second = App(settings, DockerDriver())
    async with second.running(), mcp_client(second) as client:
        await second.service(SandboxManager).reap()
        assert lease_of(second, marked).op == "lifetime"
        out = await call(client, "sandbox_run_code", sandbox_id=marked, code="print(kept)")
        assert out["stdout"] == f"{marked}\n", out
        # Still paused, billed for its checkpoint as it is (not for its whole memory).
        assert (await call(client, "sandbox_describe", sandbox_id=restoring))["state"] == "paused"
        assert (lease_of(second, restoring).op, lease_of(second, restoring).rate) == ("paused", paused_rate)
        assert (await call(client, "sandbox_resume", sandbox_id=restoring))["state"] == "running"
        out = await call(client, "sandbox_run_code", sandbox_id=restoring, code="print(kept)")
        assert out["stdout"] == f"{restoring}\n", out
        for sid in (marked, restoring):
            await call(client, "sandbox_destroy", sandbox_id=sid)
    assert containers_of(docker_driver, second) == []
    second.close()


async def test_a_sandbox_destroyed_while_it_pauses_stays_destroyed(app: App, docker_driver: DockerDriver) -> None:
    manager = app.service(SandboxManager)
    async with mcp_client(app) as first, mcp_client(app) as second:
        sid = (await call(first, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        # Memory to write out: the checkpoint takes seconds, time enough to destroy it meanwhile.
        await call(first, "sandbox_run_code", sandbox_id=sid, code="ballast = bytearray(300 << 20)")
        paused: list[bool] = []

        async def pause() -> None:
            paused.append((await first.call_tool("sandbox_pause", {"sandbox_id": sid})).is_error is False)

        async with anyio.create_task_group() as group:
            group.start_soon(pause)
            await until(lambda: manager.row(sid).state == "paused", "the pause to begin")
            assert (await call(second, "sandbox_destroy", sandbox_id=sid))["destroyed"] is True
        assert paused == [False]
        assert manager.row(sid).state == "destroyed"
        assert lease_of(app, sid).ended_at is not None
        assert docker_driver.list_labelled({LABEL_SANDBOX: sid}) == []
        disks = app.docker.disks
        assert disks is None or f"cloudskills-{sid}" not in disks.kept_names()


async def test_the_reaper_leaves_a_checkpoint_under_way_elsewhere_alone(app: App, docker_driver: DockerDriver) -> None:
    manager = app.service(SandboxManager)
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python-gvisor"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="kept = 8\nballast = bytearray(300 << 20)")
        record = manager.get(app.settings.tenant, sid, paused_ok=True)
        assert record.container_id is not None
        # Another process checkpoints it (a replica, or one killed since while the engine
        # carries on): this one's reaper sees it marked paused and its container running.
        manager.pausing._set(sid, "paused", estimate=True)
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, docker_driver.pause, record.container_id)
            await manager.reap()  # the checkpoint of 300 MiB takes seconds
        await manager.reap()
        assert (await call(client, "sandbox_describe", sandbox_id=sid))["state"] == "paused"
        assert (await call(client, "sandbox_resume", sandbox_id=sid))["state"] == "running"
        assert (await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept)"))["stdout"] == "8\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)


async def test_a_workspace_a_paused_sandbox_mounts_cannot_be_deleted_under_it(app: App) -> None:
    async with mcp_client(app) as client:
        ws = (await call(client, "workspace_create", name="kept", size_mib=32))["workspace_id"]
        mount = [{"workspace_id": ws, "path": "/mnt/kept"}]
        sid = (await call(client, "sandbox_create", template="python-gvisor", workspaces=mount))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command="echo hi > /mnt/kept/note")
        await call(client, "sandbox_pause", sandbox_id=sid)
        refused = await call_error(client, "workspace_delete", workspace_id=ws)
        assert "is mounted by sandbox" in refused and sid in refused, refused
        await call(client, "sandbox_resume", sandbox_id=sid)  # its bind is still there to restore
        out = await call(client, "sandbox_exec", sandbox_id=sid, command="cat /mnt/kept/note")
        assert out["stdout"] == "hi\n"
        await call(client, "sandbox_destroy", sandbox_id=sid)
        assert (await call(client, "workspace_delete", workspace_id=ws))["deleted"] is True


async def test_a_call_longer_than_the_ttl_is_use_not_idleness(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create", template="python", ttl_s=10))["sandbox_id"]
        out = await call(client, "sandbox_exec", sandbox_id=sid, command="sleep 13; echo done", timeout_s=60)
        assert out["stdout"] == "done\n"  # the reaper (every 0.2 s here) left it alone while it ran
        assert (await call(client, "sandbox_describe", sandbox_id=sid))["state"] == "running"
        await call(client, "sandbox_destroy", sandbox_id=sid)
