"""The CLI generated from the registry, on the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import Settings
from sandbox.docker import DockerDriver


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CLOUDSKILLS_HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


def test_skills_lists_the_catalog(settings: Settings) -> None:
    out = cli(settings.home, "skills", "--json")
    assert out.returncode == 0, out.stderr
    names = {s["name"] for s in json.loads(out.stdout)}
    assert {"sandbox", "billing"} <= names
    listed = cli(settings.home, "skills", "list", "--json")
    assert json.loads(listed.stdout) == json.loads(out.stdout)


def test_skills_get_shows_what_mcp_skills_get_does(settings: Settings) -> None:
    out = cli(settings.home, "skills", "get", "sandbox", "--json")
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)
    assert entry["uri"] == "skill://sandbox/SKILL.md" and entry["frontmatter"]["name"] == "sandbox"
    assert "sandbox_run" in entry["tools"]
    files = {r["uri"]: r for r in entry["resources"]}
    assert {"skill://sandbox/SKILL.md", "skill://sandbox/references/ERRORS.md"} <= set(files)
    assert all(r["digest"].startswith("sha256:") and r["size"] > 0 for r in files.values())
    missing = cli(settings.home, "skills", "get", "nope")
    assert missing.returncode == 1 and "no skill 'nope'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.docker
def test_sandbox_run_prints_what_the_tool_returns(settings: Settings, docker_driver: DockerDriver) -> None:
    plain = cli(settings.home, "sandbox", "run", "--language", "python", "--code", "print(6*7)")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "42\n"
    assert "exit 0" in plain.stderr and "USD" in plain.stderr
    as_json = json.loads(cli(settings.home, "sandbox", "run", "--command", "exit 3", "--json").stdout)
    assert as_json["exit_code"] == 3 and as_json["cost"]["micros"] > 0
    failing = cli(settings.home, "sandbox", "run", "--code", "print(1)", "--timeout-s", "-1")
    assert failing.returncode == 1
    assert failing.stderr.startswith("error: invalid arguments: `timeout_s`")
    assert "Traceback" not in failing.stderr
    usage = json.loads(cli(settings.home, "billing", "usage", "--json").stdout)
    assert usage["total"]["micros"] > 0


@pytest.mark.docker
def test_a_session_across_cli_invocations(settings: Settings, docker_driver: DockerDriver) -> None:
    created = json.loads(cli(settings.home, "sandbox", "create", "--json").stdout)
    sid = created["sandbox_id"]
    try:
        wrote = cli(settings.home, "sandbox", "write-file", "--sandbox-id", sid, "--path", "a.txt", "--content", "hi")
        assert wrote.returncode == 0, wrote.stderr
        ran = cli(settings.home, "sandbox", "exec", "--sandbox-id", sid, "--command", "cat a.txt")
        assert ran.stdout == "hi"
    finally:
        cli(settings.home, "sandbox", "destroy", "--sandbox-id", sid)


@pytest.mark.docker
def test_sandbox_run_prints_output_as_it_comes(settings: Settings, docker_driver: DockerDriver) -> None:
    command = "echo one; echo oops >&2; while [ ! -e /tmp/never ] && [ $SECONDS -lt 3 ]; do sleep 0.1; done; echo two"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "sandbox", "run", "--command", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"CLOUDSKILLS_HOME": str(settings.home), "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "one\n"
        assert proc.poll() is None, "the first line came while the command still ran"
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert rest == "two\n", "what streamed is not printed again"
    assert "oops\n[exit 0" in err
