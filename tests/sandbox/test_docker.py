"""The Docker driver on a real engine: hardening, the agent protocol, bounds and cleanup."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import anyio
import docker
import pytest

from common.errors import InvalidInput, NotFound
from sandbox.docker import DockerDriver
from sandbox.driver import (
    LABEL_SANDBOX,
    LABEL_STORE,
    AgentRequest,
    Command,
    FileRead,
    FileWrite,
    Limits,
    SandboxHandle,
    SandboxSpec,
)
from sandbox.hardening import GVISOR_HOST_PIDS_BASE, GVISOR_HOST_PIDS_PER_PROCESS
from sandbox.images import sandbox_image
from tests.polling import until

pytestmark = pytest.mark.docker


@pytest.fixture
def handle(docker_driver: DockerDriver) -> Iterator[SandboxHandle]:
    labels = {LABEL_STORE: "driver-test", LABEL_SANDBOX: f"sb_{uuid.uuid4().hex[:8]}"}
    spec = SandboxSpec(image=sandbox_image(), limits=Limits(memory_mib=256, pids=64), labels=labels)
    created = docker_driver.create(spec)
    yield created
    docker_driver.destroy(created.container_id)


def bash(driver: DockerDriver, handle: SandboxHandle, script: str, **kwargs: object) -> tuple[int, str, str]:
    response = driver.call(handle, AgentRequest(command=Command(argv=("bash", "-c", script), **kwargs)), 30)  # type: ignore[arg-type]
    assert response.exec is not None
    return response.exec.exit_code, response.exec.stdout.text(), response.exec.stderr.text()


def test_the_container_is_hardened(docker_driver: DockerDriver, handle: SandboxHandle) -> None:
    attrs = docker_driver.client.api.inspect_container(handle.container_id)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert attrs["Config"]["User"] == "1000:1000"


def test_a_gvisor_sandbox_gets_room_for_gvisors_own_threads_and_keeps_its_own_limit(
    docker_driver: DockerDriver,
) -> None:
    labels = {LABEL_STORE: "driver-test", LABEL_SANDBOX: f"sb_{uuid.uuid4().hex[:8]}"}
    spec = SandboxSpec(image=sandbox_image(), limits=Limits(pids=64), labels=labels, runtime="runsc")
    created = docker_driver.create(spec)
    try:
        host = docker_driver.client.api.inspect_container(created.container_id)["HostConfig"]
    finally:
        docker_driver.destroy(created.container_id)
    # The host's limit bounds runsc's own threads too; the sandbox's 64 hold inside, by gVisor.
    assert host["PidsLimit"] == 64 * GVISOR_HOST_PIDS_PER_PROCESS + GVISOR_HOST_PIDS_BASE
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]] == [("nproc", 64, 64)]
    assert host["LogConfig"]["Type"] == "none"


def test_inside_it_is_unprivileged_and_offline(docker_driver: DockerDriver, handle: SandboxHandle) -> None:
    code, out, _ = bash(
        docker_driver,
        handle,
        "id -u; grep CapEff /proc/self/status; ls /sys/class/net; touch /etc/x 2>&1; echo done",
    )
    lines = out.splitlines()
    assert lines[0] == "1000"
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2:3] == ["lo"]  # loopback is the only interface
    assert "Read-only file system" in out
    assert code == 0


def test_files_in_command_files_out_in_one_round_trip(docker_driver: DockerDriver, handle: SandboxHandle) -> None:
    request = AgentRequest(
        writes=(FileWrite("in/data.txt", b"abc"),),
        command=Command(code="open('out.txt','w').write(open('in/data.txt').read().upper())"),
        reads=(FileRead("out.txt"), FileRead("missing.txt")),
    )
    response = docker_driver.call(handle, request, 30)
    assert response.exec is not None and response.exec.exit_code == 0
    assert response.reads[0].data == b"ABC"
    assert response.reads[1].error is not None and "no file" in response.reads[1].error


def test_output_is_bounded_with_a_marker(docker_driver: DockerDriver, handle: SandboxHandle) -> None:
    code, out, err = bash(docker_driver, handle, "head -c 5000000 /dev/zero | tr '\\0' x; echo e >&2", max_output=1000)
    assert code == 0
    assert out.startswith("x" * 1000)
    assert "output truncated, 4999000 more bytes" in out
    assert err == "e\n"


def test_a_command_past_its_timeout_is_killed_with_its_children(
    docker_driver: DockerDriver, handle: SandboxHandle
) -> None:
    response = docker_driver.call(
        handle, AgentRequest(command=Command(argv=("bash", "-c", "sleep 100 & sleep 100"), timeout_s=0.5)), 30
    )
    assert response.exec is not None and response.exec.timed_out
    _, out, _ = bash(docker_driver, handle, "ps -eo comm | grep -c '^sleep' || true")
    assert out.strip() == "0"  # neither sleep survived


def test_agent_errors_are_clear(docker_driver: DockerDriver, handle: SandboxHandle) -> None:
    with pytest.raises(NotFound, match="no file /work/nope"):
        docker_driver.call(handle, AgentRequest(reads=(FileRead("nope"),)), 30)
    with pytest.raises(InvalidInput, match="command not found"):
        docker_driver.call(handle, AgentRequest(command=Command(argv=("no-such-binary",))), 30)
    with pytest.raises(InvalidInput, match="cannot write /etc/passwd"):
        docker_driver.call(handle, AgentRequest(writes=(FileWrite("/etc/passwd", b"x"),)), 30)


def test_destroy_is_idempotent_and_calls_after_it_are_not_found(
    docker_driver: DockerDriver, handle: SandboxHandle
) -> None:
    docker_driver.destroy(handle.container_id)
    docker_driver.destroy(handle.container_id)
    with pytest.raises(NotFound):
        docker_driver.call(handle, AgentRequest(command=Command(argv=("true",))), 30)
    assert not docker_driver.list_labelled({LABEL_STORE: "driver-test", LABEL_SANDBOX: "none"})


@pytest.mark.anyio
async def test_destroy_returns_once_a_removal_someone_else_started_is_done(
    docker_driver: DockerDriver, handle: SandboxHandle
) -> None:
    """The reaper (or a replica) may be removing the container when its owner destroys it:
    the owner's destroy still returns only once it is gone, as a workspace it bound is
    free only then."""
    api = docker_driver.client.api

    def remove_as_someone_else() -> None:
        with contextlib.suppress(docker.errors.APIError):  # 409 if ours came first
            api.remove_container(handle.container_id, force=True)

    def removing_or_gone() -> bool:
        try:
            return bool(api.inspect_container(handle.container_id)["State"]["Status"] == "removing")
        except docker.errors.NotFound:
            return True

    async with anyio.create_task_group() as group:
        group.start_soon(anyio.to_thread.run_sync, remove_as_someone_else)
        await until(removing_or_gone, "the other removal to start")
        await anyio.to_thread.run_sync(docker_driver.destroy, handle.container_id)
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(handle.container_id)
