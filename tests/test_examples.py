"""examples/ must keep running against the code as it is."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.docker import DockerDriver

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.docker
def test_quickstart_runs(tmp_path: Path, docker_driver: DockerDriver) -> None:
    env = {**os.environ, "CLOUDSKILLS_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "'stdout': '42\\n'" in out.stdout
    assert "sum of data.csv: 6" in out.stdout
    assert "spent so far: 0.0" in out.stdout


def test_the_mcp_config_is_valid_json() -> None:
    import json

    config = json.loads((ROOT / "examples" / "mcp-config.json").read_text())
    assert config["mcpServers"]["cloudskills"]["command"].endswith("scripts/serve")


@pytest.mark.docker
def test_the_pydantic_ai_agent_runs_offline(tmp_path: Path, docker_driver: DockerDriver) -> None:
    env = {**os.environ, "CLOUDSKILLS_HOME": str(tmp_path / "home"), "CLOUDSKILLS_POOL_SIZE": "1"}
    env.pop("MODEL", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pydantic_ai_agent.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("The mean is 6.")


def unmount_under(root: Path) -> list[str]:
    """Unmount what a run left mounted under ``root`` (a workspace it did not delete); what that was."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    left = [m for m in mounts if m.startswith(str(root))]
    for mount in left:
        subprocess.run(["umount", mount], check=False)  # its loop device detaches itself (autoclear)
    return left


@pytest.mark.docker
def test_the_multi_agent_example_runs(tmp_path: Path, docker_driver: DockerDriver) -> None:
    env = {**os.environ, "CLOUDSKILLS_HOME": str(tmp_path / "home"), "CLOUDSKILLS_POOL_SIZE": "1"}
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "multi_agent.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        left = unmount_under(tmp_path)
    assert out.returncode == 0, out.stderr
    assert not left, f"the example left its workspace mounted: {left}"
    for n in range(1, 7):
        assert re.search(rf"^{n} squared is {n * n} \(by worker-[ab]\)$", out.stdout, re.MULTILINE), out.stdout
    remembered = re.findall(r"I squared (\d+)", out.stdout)
    assert sorted(map(int, remembered)) == list(range(1, 7)), out.stdout
    assert '{"jobs": 6, "agents": [' in out.stdout


@pytest.mark.model
def test_models_and_data_runs(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDSKILLS_HOME": str(tmp_path / "home"), "CLOUDSKILLS_POOL_SIZE": "0"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "models_and_data.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # The reply's words are the model's own (they differ between CPUs): the example shows them
    # as they stream, with their usage, and stores exactly that text.
    streamed = re.search(r"^model: (.*?)\nusage: (\{.*?\}), cost: ", out.stdout, re.DOTALL | re.MULTILINE)
    assert streamed, out.stdout
    text, usage = streamed[1], ast.literal_eval(streamed[2])
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 32
    assert "server asks: db_delete (db_id=db_" in out.stdout
    assert f"stored: {[[text]]!r}" in out.stdout
    assert "deleted: True" in out.stdout
