"""`sandbox_run` with `print(1)`, end to end over stdio, cold and repeated.

    .venv/bin/python -m bench.sandbox_run [--repeat 30]

Cold: the first call to a server just started (its first sandbox, first task).
Repeated: the calls after it. Baseline, measured in the same run: `docker run
--rm <sandbox image> python3 -c 'print(1)'` from the docker CLI, which is what
the call would cost done by hand with no platform, no hardening and no billing.
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

from bench.common import summary, timed
from sandbox.images import sandbox_image


async def over_stdio(repeat: int, home: str) -> tuple[float, list[float]]:
    env = {**os.environ, "CLOUDSKILLS_HOME": home}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    async with Client(params) as client:
        samples = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            result = await client.call_tool("sandbox_run", {"code": "print(1)"})
            samples.append((time.perf_counter() - start) * 1000)
            assert not result.is_error and result.structured_content["stdout"] == "1\n"  # type: ignore[index]
    return samples[0], samples[1:]


def docker_run_baseline(repeat: int) -> list[float]:
    image = sandbox_image()
    command = ["docker", "run", "--rm", "--network=none", image, "python3", "-c", "print(1)"]
    return [timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        cold, repeated = anyio.run(over_stdio, args.repeat, home)
    baseline = docker_run_baseline(args.repeat)
    print(f"{'sandbox_run print(1) over stdio, cold':<42} {cold:.1f} ms (first call of a new server)")
    print(summary("sandbox_run print(1) over stdio, repeated", repeated))
    print(summary("baseline: docker run --rm ... print(1)", baseline))
    ratio = statistics.median(repeated) / statistics.median(baseline)
    print(f"ratio repeated/baseline (p50): {ratio:.2f}x")


if __name__ == "__main__":
    main()
