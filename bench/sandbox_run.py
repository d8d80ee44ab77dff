"""`sandbox_run` with `print(1)`, end to end over MCP: stdio (cold and repeated) and
Streamable HTTP (repeated), against a bare `docker run` measured in the same run.

    .venv/bin/python -m bench.sandbox_run [--repeat 30] [--gap 1]

Cold: the first call to a server just started. Repeated: the calls after it,
one at a time, each waiting for its answer, then ``--gap`` seconds (0: back to
back; 1: a call a second, as a person or an agent thinking between calls). The baseline is `docker run --rm
<sandbox image> python3 -c 'print(1)'` from the docker CLI: the same work done
by hand, with no platform, no hardening and no billing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import anyio
from mcp import Client, StdioServerParameters

from bench.common import http_server, summary, timed
from sandbox.images import sandbox_image
from tests.mcp_helpers import http_client


async def calls(client: Client, count: int, gap_s: float = 0.0) -> list[float]:
    samples = []
    for index in range(count):
        if index and gap_s:
            await anyio.sleep(gap_s)
        start = time.perf_counter()
        result = await client.call_tool("sandbox_run", {"code": "print(1)"})
        samples.append((time.perf_counter() - start) * 1000)
        assert not result.is_error and result.structured_content["stdout"] == "1\n"  # type: ignore[index]
    return samples


async def over_stdio(repeat: int, home: str, gap_s: float) -> list[float]:
    env = {**os.environ, "CLOUDSKILLS_HOME": home}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    async with Client(params) as client:
        return await calls(client, repeat + 1, gap_s)


async def over_http(repeat: int, home: str, gap_s: float) -> list[float]:
    async with http_server(home) as server, http_client(server.url, server.key) as client:
        await calls(client, 3)
        await anyio.sleep(2)  # let the warm pool fill
        return await calls(client, repeat, gap_s)


def docker_run_baseline(repeat: int) -> list[float]:
    command = ["docker", "run", "--rm", "--network=none", sandbox_image(), "python3", "-c", "print(1)"]
    return [timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between repeated calls (default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        stdio = anyio.run(over_stdio, args.repeat, home, args.gap)
    with tempfile.TemporaryDirectory() as home:
        http = anyio.run(over_http, args.repeat, home, args.gap)
    baseline = docker_run_baseline(args.repeat)
    print(f"{'sandbox_run print(1) over stdio, cold':<42} {stdio[0]:.1f} ms (first call of a new server)")
    print(summary("sandbox_run print(1) over stdio, repeated", stdio[1:]))
    print(summary("sandbox_run print(1) over HTTP, repeated", http))
    print(summary("baseline: docker run --rm ... print(1)", baseline))
    for name, samples in (("stdio", stdio[1:]), ("HTTP", http)):
        print(f"ratio baseline/{name} (p50): {statistics.median(baseline) / statistics.median(samples):.1f}x faster")


if __name__ == "__main__":
    main()
