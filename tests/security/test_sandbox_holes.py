"""Holes an adversarial pass found in sandboxes (issue 13, section 4), each a reproduction:
a bad request is refused with one clear sentence and leaves the sandbox alive, a read
costs a bounded amount of the server's memory, each call's output is its own, and
gVisor sandboxes show no host path."""

from __future__ import annotations

import base64
import tracemalloc
from typing import Any

import pytest
from sqlalchemy import select

from common.errors import InvalidInput
from runtime.app import App
from sandbox.driver import AgentRequest, Command, FileWrite
from scheduler.models import Task
from skills.sandbox.manager import SandboxManager
from tests.conftest import sandboxes_in_use
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

DEEP = "a/" * 1100 + "f.txt"  # the reproduction: it killed the sandbox
TOO_DEEP = "a/" * 100 + "f.txt"  # within the length bound, past the depth bound


async def agent_call(app: App, sandbox_id: str, request: AgentRequest) -> Any:
    """Straight to the sandbox's agent, past the tool schemas, as a bug or another caller might."""
    record = app.service(SandboxManager).get(app.settings.tenant, sandbox_id)
    return await app.service(SandboxManager).call(record, request, 30)


async def test_a_path_too_deep_is_refused_at_the_schema_and_the_sandbox_lives_on(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        errors = [
            await call_error(client, "sandbox_write_file", sandbox_id=sid, path=TOO_DEEP, content="x"),
            await call_error(client, "sandbox_read_file", sandbox_id=sid, path=TOO_DEEP),
            await call_error(client, "sandbox_list_files", sandbox_id=sid, path="/" + TOO_DEEP),
            await call_error(client, "sandbox_exec", sandbox_id=sid, command="pwd", cwd=TOO_DEEP),
            await call_error(client, "sandbox_run", code="1", files=[{"path": TOO_DEEP, "content": "x"}]),
            await call_error(client, "sandbox_run", code="1", outputs=[TOO_DEEP]),
            await call_error(client, "sandbox_write_file", sandbox_id=sid, path=DEEP, content="x"),
            await call_error(client, "sandbox_write_file", sandbox_id=sid, path="a\0b", content="x"),
        ]
        alive = await call(client, "sandbox_exec", sandbox_id=sid, command="echo alive")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    for message in errors[:6]:
        assert "directories deep, more than the 64" in message and "use a shorter path" in message, message
    assert "at most 1024 characters" in errors[6]
    assert "NUL byte" in errors[7]
    assert all(len(message) < 400 and "\n" not in message for message in errors)
    assert alive["stdout"] == "alive\n"
    with app.store.transaction() as session:
        ran = set(session.scalars(select(Task.op)))
    assert ran == {"create", "exec", "destroy"}, "a refused call must never become a task"


async def test_the_sandbox_agent_answers_a_request_it_cannot_carry_out_and_goes_on(app: App) -> None:
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        await call(client, "sandbox_run_code", sandbox_id=sid, code="kept = 41")
        with pytest.raises(InvalidInput) as deep:
            await agent_call(app, sid, AgentRequest(writes=(FileWrite(path=DEEP, data=b"x"),)))
        bad_env = Command(code="print(1)", language="python", env={"A=B": "c"}, persistent=True)
        with pytest.raises(InvalidInput) as env:
            await agent_call(app, sid, AgentRequest(command=bad_env))
        after = await call(client, "sandbox_run_code", sandbox_id=sid, code="print(kept + 1)")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    assert "could not carry out this request" in str(deep.value) and "Traceback" not in str(deep.value)
    assert "'A=B'" in str(env.value)
    # The agent and its interpreter lived through both: the state is still there.
    assert after["stdout"] == "42\n" and after["stderr"] == ""


async def test_env_names_are_refused_at_the_schema_and_nothing_is_charged(app: App) -> None:
    async with mcp_client(app) as client:
        errors = [
            await call_error(client, "sandbox_run", code="print(1)", env={"A=B": "c"}),
            await call_error(client, "sandbox_run", command="true", env={"1X": "c"}),
            await call_error(client, "sandbox_run", code="print(1)", env={"OK": "a\0b"}),
            await call_error(client, "sandbox_exec", sandbox_id="sb_0000000000000000", command="true", env={"": "c"}),
        ]
        usage = await call(client, "billing_usage")
    assert "'A=B' is not an environment variable name" in errors[0]
    assert "'1X' is not an environment variable name" in errors[1]
    assert "the value of OK holds a NUL byte" in errors[2]
    assert "'' is not an environment variable name" in errors[3]
    assert all("letters, digits and '_'" in m for m in (errors[0], errors[1], errors[3]))
    assert usage["total"]["micros"] == 0
    assert not sandboxes_in_use(app)


async def test_reading_a_file_of_nul_bytes_comes_back_as_base64_at_a_bounded_cost(app: App) -> None:
    size = 8_000_000
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        await call(client, "sandbox_exec", sandbox_id=sid, command=f"head -c {size} /dev/zero > zeros")
        await call(client, "sandbox_exec", sandbox_id=sid, command="printf 'a\\033b' > escape && printf 'ok\\n' > ok")
        tracemalloc.start()
        try:
            read = await call(client, "sandbox_read_file", sandbox_id=sid, path="zeros", max_bytes=size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        escape = await call(client, "sandbox_read_file", sandbox_id=sid, path="escape")
        as_text = await client.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "zeros", "encoding": "utf-8"})
        text = await call(client, "sandbox_read_file", sandbox_id=sid, path="ok")
        await call(client, "sandbox_destroy", sandbox_id=sid)
    # JSON-escaped, the same read held about 200 MB of the server's memory at once.
    assert peak < 12 * size, f"one read of {size} bytes held {peak / 1e6:.0f} MB"
    assert read["encoding"] == "base64" and base64.b64decode(read["content"]) == bytes(size)
    assert escape["encoding"] == "base64" and base64.b64decode(escape["content"]) == b"a\x1bb"
    assert as_text.is_error and "read it with encoding 'base64'" in as_text.content[0].text  # type: ignore[union-attr]
    assert text["encoding"] == "utf-8" and text["content"] == "ok\n"


async def test_a_background_process_never_writes_into_a_later_calls_output(app: App) -> None:
    # Both loops ignore SIGPIPE, so they outlive their call and keep trying to write.
    shell_loop = "(trap '' PIPE; i=0; while true; do i=$((i+1)); echo tick; echo $i > /tmp/ticks; sleep 0.05; done) &"
    python_loop = (
        "import subprocess\n"
        "subprocess.Popen(['bash', '-c', \"trap '' PIPE; i=0; while true; do i=$((i+1)); echo tock; "
        'echo tock >&2; echo $i > /tmp/tocks; sleep 0.05; done"])\n'
        "print('started')"
    )
    # A later call that lasts until both loops have written at least once during it.
    wait_for_both = (
        "wait_beat() { until [ -s $1 ]; do sleep 0.02; done; read a < $1; b=$a; "
        'while [ "$b" = "$a" ]; do sleep 0.02; read b < $1; done; }; '
        "wait_beat /tmp/ticks; wait_beat /tmp/tocks; echo done"
    )
    python_wait = (
        "import subprocess\nsubprocess.run(['bash', '-c', " + repr(wait_for_both.replace("echo done", "true")) + "])\n"
        "print('done')"
    )
    async with mcp_client(app) as client:
        sid = (await call(client, "sandbox_create"))["sandbox_id"]
        started = await call(client, "sandbox_exec", sandbox_id=sid, command=shell_loop)
        started_code = await call(client, "sandbox_run_code", sandbox_id=sid, code=python_loop)
        later = [
            await call(client, "sandbox_exec", sandbox_id=sid, command=wait_for_both),
            await call(client, "sandbox_run_code", sandbox_id=sid, code=python_wait),
            await call(client, "sandbox_exec", sandbox_id=sid, command=wait_for_both),
            await call(client, "sandbox_run_code", sandbox_id=sid, code=python_wait),
        ]
        await call(client, "sandbox_destroy", sandbox_id=sid)
    # A call may see what its own background process writes while it runs, nothing else.
    assert set(started["stdout"].split()) <= {"tick"}
    # The kernel runs unbuffered, so print() writes "started" and its newline
    # apart, and the run's own loop may write "tock" between the two.
    assert started_code["stdout"].replace("tock", "").split() == ["started"], started_code
    for output in later:
        assert (output["stdout"], output["stderr"]) == ("done\n", ""), output


@pytest.mark.parametrize("template", ["python-gvisor", "bash-gvisor"])
async def test_gvisor_sandboxes_show_no_host_path_in_mountinfo(app: App, template: str) -> None:
    docker_root = str(app.docker.client.info()["DockerRootDir"])
    async with mcp_client(app) as client:
        out = await call(client, "sandbox_run", template=template, command="cat /proc/self/mountinfo")
    mountinfo = out["stdout"]
    assert out["exit_code"] == 0 and " / " in mountinfo
    assert docker_root not in mountinfo and "overlay2" not in mountinfo, mountinfo
    assert "/var/lib/docker" not in mountinfo and "/containers/" not in mountinfo, mountinfo
