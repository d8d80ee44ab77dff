"""Workspaces a sandbox mounts: the argument's model, and how it becomes the driver's plain data.

A workspace belongs to another skill: the sandbox skill asks for its host
directory through the shared port (``skills.volumes``), which also checks the
tenant (another's workspace is not found) and its state; the driver gets a
``VolumeMount`` and labels the container with it, so the workspace's owner can
tell which sandboxes mount it.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any

import anyio
from pydantic import AfterValidator, BaseModel, Field, field_validator

from sandbox.driver import VolumeMount
from scheduler.tasks import TaskContext
from skills.volumes import volumes_of

MOUNT_PATH = re.compile(r"^/mnt(/[A-Za-z0-9_.-]+)+/?$")
MAX_MOUNTS = 8


class WorkspaceMount(BaseModel):
    workspace_id: str = Field(description="The id workspace_create returned, e.g. 'ws_0123abcd4567ef89'.")
    path: str = Field(
        max_length=256,
        description="Where it appears in the sandbox: a directory under /mnt, e.g. '/mnt/shared'.",
    )
    read_only: bool = Field(default=False, description="Mount it read-only: every write in it fails.")

    @field_validator("path")
    @classmethod
    def under_mnt(cls, path: str) -> str:
        parts = path.rstrip("/").split("/")
        if not MOUNT_PATH.match(path) or any(part in (".", "..") for part in parts):
            raise ValueError(
                f"a workspace mounts under /mnt, at a plain path such as '/mnt/shared' (letters, digits, _ . -); "
                f"{path!r} is not one"
            )
        return path.rstrip("/")


def distinct(mounts: list[WorkspaceMount]) -> list[WorkspaceMount]:
    """Refuse one path given twice (or one inside another), which one bind would hide."""
    paths = sorted(m.path for m in mounts)
    for first, second in itertools.pairwise(paths):
        if second == first or second.startswith(first + "/"):
            raise ValueError(
                f"two workspaces mount at {second!r} (or one inside the other): give each a path of its own"
            )
    return mounts


Workspaces = Annotated[list[WorkspaceMount], AfterValidator(distinct)]
WORKSPACES: Any = Field(
    default_factory=list,
    max_length=MAX_MOUNTS,
    description="Workspaces to mount (workspace_create makes them), e.g. "
    '[{"workspace_id": "ws_...", "path": "/mnt/shared", "read_only": false}]; several sandboxes may mount one '
    "at once.",
)


async def volumes_for(ctx: TaskContext, mounts: list[WorkspaceMount]) -> tuple[VolumeMount, ...]:
    """The driver's mounts for these workspaces of the caller's (refused as not found otherwise)."""
    if not mounts:
        return ()
    assert ctx.services is not None, "a task runs with the process's services"
    volumes = volumes_of(ctx.services)
    found = []
    for m in mounts:
        # Off the event loop: a workspace not mounted on the host yet is mounted now.
        source = await anyio.to_thread.run_sync(volumes.mount_source, ctx.tenant_id, m.workspace_id, m.read_only)
        found.append(VolumeMount(name=m.workspace_id, source=source, target=m.path, read_only=m.read_only))
    return tuple(found)
