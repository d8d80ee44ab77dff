"""A server starting beside a live replica leaves start-up recovery alone: a "creating"
resource on a shared store is one the other replica is making now (issue 20); a server
that starts alone removes what a previous process left half made."""

from __future__ import annotations

import pytest

from runtime.app import App
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from scheduler.workers import Workers

pytestmark = pytest.mark.anyio


async def test_recovery_runs_only_for_a_server_alone(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    app = App(settings, DockerDriver("unix:///nonexistent/docker.sock"))
    recovered: list[str] = []

    async def recover() -> list[str]:
        recovered.append(app.workers.id)
        return []

    monkeypatch.setattr(app.duties, "recover", recover)
    other = Workers(app.store, "w-other-replica")
    other.register()
    try:
        async with app.running():
            assert recovered == [], "a live replica's half-made resources are its own"
        # Stopped at once, before its heartbeat loop first ran: it leaves no worker row behind.
        assert other.alive() == {"w-other-replica"}
        other.leave()
        async with app.running():
            assert recovered == [app.workers.id]
    finally:
        app.close()
