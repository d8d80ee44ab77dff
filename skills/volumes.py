"""The port through which other skills use a tenant's workspaces: no skill imports another.

The workspace skill's manager implements it; the sandbox skill asks it where a
workspace's filesystem is to bind it into a container, and the database skill
reads and writes files in it (``db_export``, ``db_import``). A handler finds it
with ``ctx.service(WorkspaceVolumes)``; ``volumes_of`` says clearly when this
server has none.
"""

from __future__ import annotations

from common.errors import BackendUnavailable
from scheduler.resources import Services


class WorkspaceVolumes:
    """A tenant's workspaces, as other skills see them. Another tenant's workspace, or one
    that does not exist, raises the same ``NotFound``. (A base class, not a Protocol:
    ``Services`` finds a service by its class.)"""

    def mount_source(self, tenant_id: str, workspace_id: str, read_only: bool) -> str:
        """The host directory to bind into a sandbox (mounted now, on demand); refused for a
        workspace that cannot be used (stopped for money and not covered again)."""
        raise NotImplementedError

    def read_bytes(self, tenant_id: str, workspace_id: str, path: str, max_bytes: int) -> bytes:
        """A file's content; refused when it is larger than ``max_bytes``."""
        raise NotImplementedError

    def write_bytes(self, tenant_id: str, workspace_id: str, path: str, data: bytes) -> str:
        """Write a file (its directories made as needed); the path it was written at."""
        raise NotImplementedError


def volumes_of(services: Services, instead: str = "call without workspaces") -> WorkspaceVolumes:
    try:
        return services.get(WorkspaceVolumes)
    except LookupError as exc:
        raise BackendUnavailable(
            f"this server keeps no workspaces (the workspace skill is not loaded): {instead}."
        ) from exc
