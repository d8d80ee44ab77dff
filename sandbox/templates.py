"""Sandbox templates: what an agent names when it asks for a sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.driver import Limits


@dataclass(frozen=True)
class Template:
    name: str
    language: str  # the language `run_code` uses by default
    description: str
    limits: Limits = field(default_factory=Limits)
    runtime: str | None = None  # the Docker runtime; None is the engine's default (runc)
    image: str = "sandbox"  # one of sandbox.images.IMAGES


# The most any sandbox may ask for, whatever the template.
MAX_LIMITS = Limits(vcpus=2.0, memory_mib=4096, pids=1024, disk_mib=16384)

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("python", "python", "Debian 12 with Python 3.11 and bash."),
        Template("bash", "bash", "Debian 12 with bash, coreutils and Python 3.11."),
        # What coding agents reach for: compilers, git, venv and pip, pytest, curl.
        Template(
            "dev",
            "python",
            "Debian 12 with build-essential (gcc, g++, make), git, Python 3.11 with venv, pip and pytest, "
            "curl and ping; a 4 GiB disk.",
            limits=Limits(pids=512, disk_mib=4096),
            image="dev",
        ),
        # What agents analyse data and draw charts with; figures are drawn with Agg (no display).
        Template(
            "python-data",
            "python",
            "Debian 12 with Python 3.11, numpy, pandas, matplotlib (Agg), scipy, scikit-learn and pillow; "
            "1 GiB of memory.",
            limits=Limits(memory_mib=1024),
            image="python-data",
        ),
        Template("node", "bash", "Debian 12 with Node.js 18 and npm, bash and Python 3.11.", image="node"),
        # gVisor: the sandbox's system calls meet a user-space kernel, not the host's.
        Template("python-gvisor", "python", "The python template, isolated by gVisor (runsc).", runtime="runsc"),
        Template("bash-gvisor", "bash", "The bash template, isolated by gVisor (runsc).", runtime="runsc"),
    )
}
