"""A sandbox's disk on the real engine: capped, on the host's disk, and gone when the sandbox
ends, however it ends; what a killed process left half set up is swept."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import anyio
import pytest

from sandbox.disks import LoopDisks
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, AgentRequest, Command, Limits, SandboxHandle, SandboxSpec
from sandbox.exits import EXIT_RELEASED
from sandbox.images import sandbox_image
from tests.polling import until

pytestmark = pytest.mark.docker


def loop_devices_of(name: str) -> list[str]:
    """The loop devices whose backing file was this sandbox's disk."""
    command = ["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"]
    listed = subprocess.run(command, capture_output=True, text=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if f"/{name}." in line]


def start(driver: DockerDriver, disk_mib: int = 300, hold_s: float = 10.0) -> SandboxHandle:
    labels = {LABEL_STORE: "disk-test", LABEL_SANDBOX: f"sb_{uuid.uuid4().hex[:12]}"}
    spec = SandboxSpec(image=sandbox_image(), limits=Limits(disk_mib=disk_mib), labels=labels, hold_s=hold_s)
    return driver.create(spec)


def bash(driver: DockerDriver, handle: SandboxHandle, script: str) -> tuple[int, str, str]:
    response = driver.call(handle, AgentRequest(command=Command(argv=("bash", "-c", script))), 60)
    assert response.exec is not None
    return response.exec.exit_code, response.exec.stdout.text(), response.exec.stderr.text()


def test_the_disk_is_capped_shared_by_work_and_tmp_and_freed_on_destroy(docker_driver: DockerDriver) -> None:
    assert docker_driver.disks is not None, docker_driver.disk_backing()
    handle = start(docker_driver)
    try:
        assert loop_devices_of(handle.name), "the disk is a loop device while the sandbox lives"
        assert not list(docker_driver.disks.root.glob(f"{handle.name}.*")), "the host let go of it at once"
        _, out, err = bash(
            docker_driver,
            handle,
            "head -c 200M /dev/zero > /work/a && head -c 200M /dev/zero > /tmp/b; echo exit=$?; df -m /work /tmp",
        )
    finally:
        docker_driver.destroy(handle.container_id)
    assert "No space left on device" in err and "exit=1" in out, (out, err)
    assert [line.split()[1] for line in out.splitlines()[2:]] == ["280", "280"], "one disk of 300 MiB for both"
    assert not loop_devices_of(handle.name), "destroyed: its loop device and file are gone"


@pytest.mark.anyio
async def test_a_sandbox_that_ends_by_itself_frees_its_disk(docker_driver: DockerDriver) -> None:
    handle = start(docker_driver, hold_s=60)
    try:
        docker_driver._forget(handle.container_id)  # as a killed server lets go of a warm sandbox
        await until(lambda: docker_driver.exit_of(handle.container_id) is not None, "the sandbox to end", 15)
        state = docker_driver.client.api.inspect_container(handle.container_id)["State"]
        await until(lambda: not loop_devices_of(handle.name), "the kernel to free its disk", 15)
    finally:
        docker_driver.destroy(handle.container_id)
    assert state["ExitCode"] == EXIT_RELEASED


@pytest.mark.anyio
async def test_a_sandbox_handed_over_ends_after_its_idle_limit(docker_driver: DockerDriver) -> None:
    handle = start(docker_driver)
    try:
        docker_driver.call(handle, AgentRequest(idle_s=1), 10)
        docker_driver._forget(handle.container_id)  # its server is gone: it lives on, until idle 1 s
        begun = time.monotonic()
        with anyio.fail_after(15):
            while (ended := docker_driver.exit_of(handle.container_id)) is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        waited = time.monotonic() - begun
    finally:
        docker_driver.destroy(handle.container_id)
    assert ended.expired and "idle for its ttl_s" in ended.reason
    assert 0.5 < waited < 5


def test_what_a_killed_process_left_half_set_up_is_swept(tmp_path: Path) -> None:
    disks = LoopDisks(tmp_path / "disks")
    left = disks.prepare("cloudskills-sb_killed", 256)
    disks._preparing.clear()  # as if the process that prepared it were gone
    assert left.is_mount() and loop_devices_of("cloudskills-sb_killed")
    assert disks.sweep(older_than_s=3600) == [], "young: maybe a creation under way elsewhere"
    assert disks.sweep(older_than_s=0) == [left.name]
    assert not left.exists() and list((tmp_path / "disks").glob("cloudskills-sb_killed*")) == []
    assert not loop_devices_of("cloudskills-sb_killed")
