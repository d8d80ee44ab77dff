"""Placement among engines, without any engine: a sandbox that binds this machine's paths
(a workspace, egress's socket) goes only to an engine of this machine, and the refusal says
why when none has room. No engine is called: placement reads only what it counted."""

from __future__ import annotations

import pytest

from common.errors import BackendUnavailable
from sandbox.docker import DockerDriver
from sandbox.driver import SandboxSpec, VolumeMount
from sandbox.engines import Engine, Engines


def engines(local_capacity: int) -> Engines:
    return Engines(
        [
            Engine("here", DockerDriver("unix:///nonexistent/docker.sock"), capacity=local_capacity),
            # Never reached: a TCP engine is another machine's, and placement asks it nothing.
            Engine("there", DockerDriver("tcp://192.0.2.1:2376"), capacity=64),
        ]
    )


def test_a_sandbox_with_host_mounts_goes_to_an_engine_of_this_machine() -> None:
    found = engines(local_capacity=2)
    assert [e.name for e in found.placement()] == ["there", "here"]  # most room first
    assert [e.name for e in found.placement(local_only=True)] == ["here"]


def test_with_no_local_room_a_mounting_sandbox_is_refused_saying_why() -> None:
    found = engines(local_capacity=0)
    mount = VolumeMount(name="ws", source="/tmp/ws", target="/mnt/ws", read_only=False)
    with pytest.raises(BackendUnavailable, match="mounts this machine's files"):
        found.create(SandboxSpec(image="cloudskills/sandbox:x", volumes=(mount,)))
