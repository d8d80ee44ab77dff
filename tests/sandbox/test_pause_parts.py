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

import docker.errors
import pytest

from common.errors import BackendUnavailable
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


class StartsAfter:
    """The engine's start call, failing ``failures`` times with ``message`` first."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message, self.starts, self.deletes = failures, message, 0, 0

    def _url(self, template: str, *parts: str) -> str:
        return template.format(*parts)

    def _post(self, url: str, params: dict[str, str]) -> str:
        self.starts += 1
        if self.starts <= self.failures:
            raise docker.errors.APIError("500 Server Error", explanation=self.message)
        return url

    def _raise_for_status(self, response: object) -> None:
        pass

    def _delete(self, url: str) -> str:
        self.deletes += 1
        return url


UPLOAD_RACE = "failed to upload checkpoint to containerd: commit failed: content sha256:6393f4: already exists"


def test_a_restore_that_meets_the_engines_upload_race_is_tried_again() -> None:
    engine = StartsAfter(2, UPLOAD_RACE)
    checkpoint.restore(engine, "c1")  # type: ignore[arg-type]
    assert (engine.starts, engine.deletes) == (3, 1), "started on the third try, then the checkpoint let go"


def test_a_restore_fails_with_the_engines_words_after_its_tries_or_at_once_for_another_error() -> None:
    racing = StartsAfter(9, UPLOAD_RACE)
    with pytest.raises(BackendUnavailable, match=r"could not restore the sandbox .*already exists"):
        checkpoint.restore(racing, "c1")  # type: ignore[arg-type]
    assert (racing.starts, racing.deletes) == (checkpoint.RESTORE_ATTEMPTS, 0), "the checkpoint is kept"
    other = StartsAfter(9, "cannot restore: no space left on device")
    with pytest.raises(BackendUnavailable, match="no space left"):
        checkpoint.restore(other, "c1")  # type: ignore[arg-type]
    assert other.starts == 1
