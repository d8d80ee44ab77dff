"""The janitor a stopping server leaves behind removes a container the engine makes after
the server is gone, and gives up on one it never makes (real Docker)."""

from __future__ import annotations

import uuid

import docker
import pytest

from sandbox.driver import LABEL_MANAGED
from sandbox.images import sandbox_image
from sandbox.janitor import leave_to_janitor, sweep
from tests.polling import until

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def test_a_container_made_after_its_server_left_is_removed() -> None:
    api = docker.APIClient()
    label = f"cloudskills.test-janitor={uuid.uuid4().hex}"
    leave_to_janitor(None, [label], within_s=60)  # before the engine has made it
    key, value = label.split("=")
    created = api.create_container(sandbox_image(), command=["true"], labels={key: value, LABEL_MANAGED: "1"})
    try:
        await until(lambda: not api.containers(all=True, filters={"label": label}), "the janitor to remove it", 60)
    finally:
        if api.containers(all=True, filters={"label": label}):
            api.remove_container(created["Id"], force=True)


def test_one_never_made_is_given_up_after_its_time() -> None:
    assert sweep(docker.APIClient(), ["cloudskills.test-janitor=never"], within_s=0.6) == [
        "cloudskills.test-janitor=never"
    ]
