"""The python-data template: `import pandas, matplotlib; plot; savefig` through `sandbox_run`
over MCP stdio from a fresh server, warm, against the same code in a bare `docker run` of
the same image, measured in the same run.

    .venv/bin/python -m bench.templates [--repeat 20]

Warm: the first calls show the pool that python-data is used, so it keeps some ready;
the calls measured come after, one a second (a new user's pace). The baseline is
`docker run --rm --network=none -e MPLBACKEND=Agg -e MPLCONFIGDIR=/tmp/matplotlib
<python-data image> python3 -c CODE`: the same work by hand, with no platform, no
hardening and no billing; once with no limits (both cores) and once with the
template's (1 vCPU, 1 GiB), as the sandbox has.
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

from bench.common import percentile, summary, timed
from sandbox.images import IMAGE_ENV, sandbox_image
from sandbox.templates import TEMPLATES

CODE = (
    "import pandas as pd, matplotlib.pyplot as plt\n"
    "pd.DataFrame({'x': range(10), 'y': [v * v for v in range(10)]}).plot(x='x', y='y')\n"
    "plt.savefig('/tmp/chart.png')\n"
    "print('ok')\n"
)
WARM_UP = 3
PAUSE_S = 1.0


async def over_stdio(repeat: int, home: str) -> list[float]:
    env = {**os.environ, "CLOUDSKILLS_HOME": home}
    params = StdioServerParameters(command=sys.executable, args=["-m", "runtime", "serve"], env=env)
    samples = []
    async with Client(params) as client:
        for index in range(WARM_UP + repeat):
            await anyio.sleep(PAUSE_S)  # one call a second; the pool refills between them
            start = time.perf_counter()
            result = await client.call_tool("sandbox_run", {"template": "python-data", "code": CODE})
            elapsed = (time.perf_counter() - start) * 1000
            assert not result.is_error, result.content
            assert result.structured_content["stdout"].strip().endswith("ok")
            if index >= WARM_UP:
                samples.append(elapsed)
    return samples


def docker_run_baseline(repeat: int, limited: bool) -> list[float]:
    env = [arg for name, value in IMAGE_ENV["python-data"].items() for arg in ("-e", f"{name}={value}")]
    limits = TEMPLATES["python-data"].limits
    sized = [f"--cpus={limits.vcpus:g}", f"--memory={limits.memory_mib}m"] if limited else []
    image = sandbox_image("python-data")
    command = ["docker", "run", "--rm", "--network=none", *sized, *env, image, "python3", "-c", CODE]
    return [timed(lambda: subprocess.run(command, check=True, capture_output=True)) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        warm = anyio.run(over_stdio, args.repeat, home)
    bare = docker_run_baseline(args.repeat, limited=False)
    sized = docker_run_baseline(args.repeat, limited=True)
    print(summary("sandbox_run python-data plot, warm (stdio)", warm), f"p95={percentile(warm, 0.95):.1f} ms")
    for name, samples in (("docker run, no limits", bare), ("docker run, the template's vCPU+memory", sized)):
        print(summary(f"baseline: {name}", samples), f"p95={percentile(samples, 0.95):.1f} ms")
        print(f"  ratio {name} / sandbox_run (p50): {statistics.median(samples) / statistics.median(warm):.2f}x")


if __name__ == "__main__":
    main()
