"""Pause and resume of a gVisor session sandbox against the size of its live data, over MCP
stdio from a fresh `cloudskills serve` with default settings, beside the engine's own
checkpoint and restore of the same data in a bare gVisor container (`docker checkpoint
create` and `docker start --checkpoint`), in the same run.

    .venv/bin/python -m bench.pause [--rounds 5] [--sizes 64,512]

For each size, a `python-gvisor` sandbox (1 GiB of memory) holds that many MiB of random
bytes in its interpreter; then `--rounds` times: `sandbox_pause`, `sandbox_resume`, and a
check that the bytes' digest is unchanged. Reported: each op's time as the MCP client sees
it (p50/p95/p99), the checkpoint's size, the memory the running sandbox used (what a pause
gives back to the host) and how many idle default sandboxes that memory holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from bench.common import percentile
from sandbox.images import sandbox_image

FILL = "import hashlib, os\ndata = os.urandom({mib} << 20)\nprint(hashlib.sha256(data).hexdigest())"
DIGEST = "print(hashlib.sha256(data).hexdigest())"


def stats(name: str, samples: list[float]) -> str:
    return (
        f"| {name} | {len(samples)} | {statistics.median(samples):.0f} | {percentile(samples, 0.95):.0f} | "
        f"{percentile(samples, 0.99):.0f} |"
    )


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content[0].text}")  # type: ignore[union-attr]
    return dict(result.structured_content or {})


async def over_mcp(sizes: list[int], rounds: int) -> dict[Any, Any]:
    home = tempfile.mkdtemp(prefix="cloudskills-bench-pause-")
    env = {**os.environ, "CLOUDSKILLS_HOME": home}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    report: dict[Any, Any] = {}
    async with Client(params) as client:
        idle = await call(client, "sandbox_create", template="python")
        idle_bytes = (await call(client, "sandbox_describe", sandbox_id=idle["sandbox_id"]))["memory_bytes"]
        await call(client, "sandbox_destroy", sandbox_id=idle["sandbox_id"])
        report["idle_default_mib"] = idle_bytes / (1 << 20)
        for mib in sizes:
            sid = (await call(client, "sandbox_create", template="python-gvisor", memory_mib=1024))["sandbox_id"]
            digest = (await call(client, "sandbox_run_code", sandbox_id=sid, code=FILL.format(mib=mib)))["stdout"]
            used = (await call(client, "sandbox_describe", sandbox_id=sid))["memory_bytes"]
            pauses, resumes, sizes_mib = [], [], []
            for _ in range(rounds):
                start = time.perf_counter()
                paused = await call(client, "sandbox_pause", sandbox_id=sid)
                pauses.append((time.perf_counter() - start) * 1000)
                sizes_mib.append(paused["checkpoint_mib"])
                start = time.perf_counter()
                await call(client, "sandbox_resume", sandbox_id=sid)
                resumes.append((time.perf_counter() - start) * 1000)
                again = (await call(client, "sandbox_run_code", sandbox_id=sid, code=DIGEST))["stdout"]
                assert again == digest, "the live data changed across a pause"
            await call(client, "sandbox_destroy", sandbox_id=sid)
            report[mib] = {"pause": pauses, "resume": resumes, "checkpoint_mib": sizes_mib, "used": used}
    return report


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def bare_engine(sizes: list[int], rounds: int) -> dict[int, dict[str, list[float]]]:
    """The engine's own checkpoint and restore of a bare gVisor container holding the same data."""
    image = sandbox_image()
    report: dict[int, dict[str, list[float]]] = {}
    for mib in sizes:
        code = f"import os, time\ndata = os.urandom({mib} << 20)\nprint('ready', flush=True)\ntime.sleep(86400)"
        name = f"cloudskills-bench-pause-{os.getpid()}-{mib}"
        docker(
            "run",
            "-d",
            "--name",
            name,
            "--runtime",
            "runsc",
            "--network",
            "none",
            "-m",
            "1g",
            image,
            "python3",
            "-c",
            code,
        )
        try:
            while "ready" not in docker("logs", name):
                time.sleep(0.1)
            pauses, resumes = [], []
            for index in range(rounds):
                checkpoint = f"c{index}"
                pauses.append(timed_cli("checkpoint", "create", name, checkpoint))
                clear_stale(name)  # as sandbox_resume does (sandbox/checkpoint.py): gVisor 20221219's flaw
                resumes.append(timed_cli("start", "--checkpoint", checkpoint, name))
                docker("checkpoint", "rm", name, checkpoint)
            report[mib] = {"pause": pauses, "resume": resumes}
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    return report


def clear_stale(name: str) -> None:
    from sandbox.checkpoint import clear_stale_runsc_state

    clear_stale_runsc_state(docker("inspect", "-f", "{{.Id}}", name))


def timed_cli(*args: str) -> float:
    start = time.perf_counter()
    docker(*args)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="64,512", help="MiB of live data, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    ours = anyio.run(over_mcp, sizes, args.rounds)
    bare = bare_engine(sizes, args.rounds)
    print(f"pause and resume, {args.rounds} rounds per size, load {os.getloadavg()[0]:.1f}; times in ms")
    print("| what | n | p50 | p95 | p99 |\n|---|---|---|---|---|")
    for mib in sizes:
        for op in ("pause", "resume"):
            print(stats(f"{mib} MiB live: sandbox_{op} over MCP stdio", ours[mib][op]))
            print(stats(f"{mib} MiB live: bare `docker {op_cli(op)}` (runsc)", bare[mib][op]))
    print()
    for mib in sizes:
        used = ours[mib]["used"] / (1 << 20)
        frees = used / ours["idle_default_mib"]
        ratio = statistics.median(ours[mib]["pause"]) / statistics.median(bare[mib]["pause"])
        print(
            f"{mib} MiB live: checkpoint {statistics.median(ours[mib]['checkpoint_mib']):.0f} MiB on disk; the running "
            f"sandbox used {used:.0f} MiB, freed by a pause: room for {frees:.0f} idle default sandboxes "
            f"({ours['idle_default_mib']:.0f} MiB each, measured); pause vs bare engine {ratio:.2f}x"
        )
    print("the live data's sha256 was checked after every resume: unchanged in every round")


def op_cli(op: str) -> str:
    return "checkpoint create" if op == "pause" else "start --checkpoint"


if __name__ == "__main__":
    main()
