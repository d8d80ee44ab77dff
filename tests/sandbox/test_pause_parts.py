"""Pause's parts that need no engine (fast tier): the agent's idle clock does not count the
time a sandbox was paused, and the stale runsc state a restored-then-checkpointed gVisor
container leaves behind is cleared only when its sandbox process is gone. The whole path runs
on real gVisor in tests/skills/test_sandbox_pause.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import checkpoint

AGENT = str(Path(__file__).resolve().parents[2] / "sandbox" / "agent")


@pytest.fixture
def lifetime_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.syspath_prepend(AGENT)
    import lifetime

    yield lifetime
    sys.modules.pop("lifetime", None)


def test_a_wait_that_ended_far_too_late_was_a_pause_and_restarts_the_idle_clock(lifetime_module: object) -> None:
    life = lifetime_module.Lifetime(hold_s=10.0)  # type: ignore[attr-defined]
    life.set_idle(5.0)
    now = time.monotonic()
    assert not life.woke_late(5.0, now - 5.5)  # on time (a little late): idle, it ends
    life.last = now - 3600.0  # a wait of 5 s that took an hour: the sandbox was frozen meanwhile
    assert life.left() == 0.0
    assert life.woke_late(5.0, now - 3600.0)
    assert 4.9 < life.left() <= 5.0


def state_file(directory: Path, container_id: str, pid: int) -> Path:
    for suffix in (".state", ".lock"):
        path = directory / f"{container_id}_sandbox:{container_id}{suffix}"
        path.write_text(json.dumps({"status": "paused", "sandbox": {"pid": pid}}) if suffix == ".state" else "")
    return directory / f"{container_id}_sandbox:{container_id}.state"


def test_stale_runsc_state_is_cleared_only_when_its_sandbox_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "RUNSC_STATE_GLOB", str(tmp_path) + "/{id}_sandbox:{id}.*")
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = state_file(tmp_path, "dead", ended.pid)
    live = state_file(tmp_path, "alive", os.getpid())
    assert checkpoint.clear_stale_runsc_state("dead")
    assert not stale.exists() and not stale.with_suffix(".lock").exists()
    assert not checkpoint.clear_stale_runsc_state("alive")
    assert live.exists()
    assert not checkpoint.clear_stale_runsc_state("never")
