"""Files in and out of a session sandbox over MCP stdio, from a fresh server, against
`docker cp` of the same bytes measured in the same run; then the data dir's store after a
thousand 1 MiB writes.

    .venv/bin/python -m bench.files [--repeat 15] [--writes 1000]

Each row is a client's whole round trip over the server's stdin and stdout (JSON
included): `sandbox_write_file` / `sandbox_read_file` of 1 and 10 MiB of text,
`sandbox_run` with 100 files of 10 KiB, `sandbox_exec` printing 1 MiB. The client here
reads the server's lines in linear time, as a client should. The official MCP Python
client is measured too, on 10 MiB: it assembles each line by concatenating 64 KiB chunks
(quadratic in the line's length), which costs it most of a second more on its own side.
The baseline is the docker CLI copying the same bytes into and out of a plain container of
the sandbox image (`docker cp`). Targets (issue 24): 10 MiB write and read each <= 0.5 s,
1 MiB <= 60 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from bench.common import percentile, timed
from sandbox.images import sandbox_image

MIB = 1 << 20
TARGETS = {"write 1 MiB": 60.0, "read 1 MiB": 60.0, "write 10 MiB": 500.0, "read 10 MiB": 500.0}


def text(size: int) -> str:
    """``size`` bytes of printable text: what agents write (code, data, logs)."""
    alphabet = string.ascii_letters + string.digits + " \n"
    block = "".join(random.choices(alphabet, k=MIB))
    return (block * (size // MIB + 1))[:size]


def row(name: str, samples: list[float], target_ms: float | None = None) -> str:
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    verdict = "" if target_ms is None else ("  ok" if p50 <= target_ms else f"  over the {target_ms:.0f} ms target")
    return f"{name:<44} n={len(samples):<4} p50={p50:8.1f} ms  p95={p95:8.1f} ms{verdict}"


class StdioClient:
    """A minimal MCP client over a server's stdin and stdout (initialize, tools/call)."""

    def __init__(self, home: str) -> None:
        env = {**os.environ, "CLOUDSKILLS_HOME": home}
        command = [sys.executable, "-m", "runtime", "serve"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        self.buffer = bytearray()
        self.next_id = 0
        self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        searched = 0
        while (end := self.buffer.find(b"\n", searched)) < 0:
            searched = len(self.buffer)
            chunk = os.read(self.proc.stdout.fileno(), MIB)
            if not chunk:
                raise EOFError("the server closed its stdout")
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return dict(json.loads(line))

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while (answer := self.receive()).get("id") != self.next_id:
            pass
        return dict(answer["result"])

    def call(self, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        begun = time.perf_counter()
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        elapsed = (time.perf_counter() - begun) * 1000
        assert not result.get("isError"), result["content"]
        return elapsed, dict(result["structuredContent"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def over_stdio(home: str, repeat: int, writes: int) -> tuple[dict[str, list[float]], int]:
    samples: dict[str, list[float]] = {}
    client = StdioClient(home)
    try:
        sid = client.call("sandbox_create", {"template": "python", "disk_mib": 4096})[1]["sandbox_id"]
        for size in (MIB, 10 * MIB):
            content, label = text(size), f"{size // MIB} MiB"
            write = {"sandbox_id": sid, "path": "bench.txt", "content": content}
            read = {"sandbox_id": sid, "path": "bench.txt", "max_bytes": 10 * MIB}
            for _ in range(repeat):
                samples.setdefault(f"write {label}", []).append(client.call("sandbox_write_file", write)[0])
                elapsed, got = client.call("sandbox_read_file", read)
                assert got["content"] == content
                samples.setdefault(f"read {label}", []).append(elapsed)
        files = [{"path": f"in/f{i}.txt", "content": text(10 * 1024)} for i in range(100)]
        run = {"template": "python", "command": "ls in | wc -l", "files": files}
        output = {"sandbox_id": sid, "command": f"head -c {MIB} bench.txt", "max_output": MIB}
        for _ in range(repeat):
            elapsed, ran = client.call("sandbox_run", run)
            assert ran["stdout"] == "100\n"
            samples.setdefault("run with 100 files", []).append(elapsed)
            elapsed, printed = client.call("sandbox_exec", output)
            assert len(printed["stdout"]) == MIB
            samples.setdefault("exec printing 1 MiB", []).append(elapsed)
        one = {"sandbox_id": sid, "path": "many.txt", "content": text(MIB)}
        for n in range(writes):
            client.call("sandbox_write_file", {**one, "path": f"many-{n % 10}.txt"})
        client.call("sandbox_destroy", {"sandbox_id": sid})
    finally:
        client.close()
    store = sum(path.stat().st_size for path in Path(home).glob("cloudskills.db*"))
    return samples, store


async def official_client(home: str, repeat: int) -> dict[str, list[float]]:
    """10 MiB through the official MCP Python client, whole round trips as it sees them."""
    env = {**os.environ, "CLOUDSKILLS_HOME": home}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    samples: dict[str, list[float]] = {}
    content = text(10 * MIB)
    async with Client(params) as client:
        created = await client.call_tool("sandbox_create", {"template": "python", "disk_mib": 4096})
        sid = (created.structured_content or {})["sandbox_id"]
        for _ in range(repeat):
            for name, tool, arguments in (
                ("write", "sandbox_write_file", {"sandbox_id": sid, "path": "b.txt", "content": content}),
                ("read", "sandbox_read_file", {"sandbox_id": sid, "path": "b.txt", "max_bytes": 10 * MIB}),
            ):
                begun = time.perf_counter()
                result = await client.call_tool(tool, arguments)
                samples.setdefault(name, []).append((time.perf_counter() - begun) * 1000)
                assert not result.is_error
        await client.call_tool("sandbox_destroy", {"sandbox_id": sid})
    return samples


def copy(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def docker_cp(repeat: int) -> dict[str, list[float]]:
    """The same bytes copied by the docker CLI into and out of a plain container of the image."""
    samples: dict[str, list[float]] = {}
    name = f"cloudskills-bench-cp-{os.getpid()}"
    start = ["docker", "run", "-d", "--rm", "--network=none", "--name", name, sandbox_image(), "sleep", "3600"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        with tempfile.TemporaryDirectory() as work:
            for size in (MIB, 10 * MIB):
                label, local, back = f"{size // MIB} MiB", Path(work) / "in.txt", Path(work) / "out.txt"
                local.write_text(text(size))
                into = ["docker", "cp", str(local), f"{name}:/tmp/bench.txt"]
                out_of = ["docker", "cp", f"{name}:/tmp/bench.txt", str(back)]
                for _ in range(repeat):
                    for way, command in (("in", into), ("out", out_of)):
                        samples.setdefault(f"{way} {label}", []).append(timed(partial(copy, command)))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--writes", type=int, default=1000, help="1 MiB writes before the store is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        mcp, store = over_stdio(home, args.repeat, args.writes)
    with tempfile.TemporaryDirectory() as home:
        official = anyio.run(official_client, home, max(3, args.repeat // 3))
    baseline = docker_cp(args.repeat)
    print("sandbox files over MCP stdio from a fresh server, against docker cp of the same bytes")
    for label in ("1 MiB", "10 MiB"):
        for way, cp in (("write", "in"), ("read", "out")):
            print(row(f"sandbox_{way}_file {label}", mcp[f"{way} {label}"], TARGETS[f"{way} {label}"]))
            print(row(f"  baseline: docker cp {cp} {label}", baseline[f"{cp} {label}"]))
    print(row("sandbox_run with 100 files of 10 KiB", mcp["run with 100 files"]))
    print(row("sandbox_exec printing 1 MiB", mcp["exec printing 1 MiB"]))
    for way in ("write", "read"):
        print(row(f"official MCP Python client: {way} 10 MiB", official[way]))
    print(f"the data dir's store after {args.writes} writes of 1 MiB: {store / MIB:.2f} MiB")


if __name__ == "__main__":
    main()
