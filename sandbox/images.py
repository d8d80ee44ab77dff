"""Sandbox images, built here from Debian's packages and cached by content.

No container registry is assumed. Each image (``IMAGES``: the lean ``sandbox``
and the ``dev`` toolchain) starts from a Debian root filesystem made by
``debootstrap`` from Debian's package archive and imported into the engine;
the sandbox image adds the exec agent on top. Each tag carries a hash of
everything that went into it, so an image is built once and rebuilt only when
its recipe changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import docker.errors

from common.errors import BackendUnavailable
from sandbox.docker import AGENT_DIR, AGENT_PATH, DockerDriver

Progress = Callable[[str], None]

# Bump when the build steps below change in a way the inputs do not show.
RECIPE_VERSION = "1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("CLOUDSKILLS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "ca-certificates", "procps")
# What an agent reaches for when it builds and tests code.
DEV_PACKAGES = (
    *BASE_PACKAGES,
    "build-essential",
    "git",
    "python3-venv",
    "python3-pip",
    "python3-pytest",
    "curl",
    "iputils-ping",
)
# What an agent analyses data and draws charts with: Debian's builds of the usual stack.
DATA_PACKAGES = (
    *BASE_PACKAGES,
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-scipy",
    "python3-sklearn",
    "python3-pil",
)
NODE_PACKAGES = (*BASE_PACKAGES, "nodejs", "npm")
# Image name -> the Debian packages of its root filesystem. Templates name one.
IMAGES: dict[str, tuple[str, ...]] = {
    "sandbox": BASE_PACKAGES,
    "dev": DEV_PACKAGES,
    "python-data": DATA_PACKAGES,
    "node": NODE_PACKAGES,
}
# Images whose packages apt installs on another image's root filesystem, in a build
# container, rather than debootstrap: npm's maintainer scripts fail under debootstrap,
# which configures a long list of packages in an order apt would not.
APT_IMAGES: dict[str, tuple[str, tuple[str, ...]]] = {"node": ("sandbox", ("nodejs", "npm"))}
# Image name -> the environment every command in it gets (the agent passes on the names
# listed in CLOUDSKILLS_IMAGE_ENV). The root is read-only and there is no display:
# matplotlib draws with Agg and keeps its font cache under /tmp.
IMAGE_ENV: dict[str, dict[str, str]] = {
    "python-data": {"MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/matplotlib"},
}
# Trimmed from the root filesystem: documentation and caches no sandbox needs.
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)


def stderr_progress(line: str) -> None:
    print(f"cloudskills: {line}", file=sys.stderr, flush=True)


AGENT_FILES = (
    "agent.py",
    "kernel.py",
    "files.py",
    "commands.py",
    "lifetime.py",
    "wire.py",
    "processes.py",
    "streaming.py",
)


def agent_file(name: str) -> bytes:
    return resources.files("sandbox.agent").joinpath(name).read_bytes()


def content_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ImageRecipe:
    """The two tags that a build produces, derived from the recipe's content."""

    base_tag: str
    sandbox_tag: str


def recipe(name: str = "sandbox") -> ImageRecipe:
    packages = IMAGES[name]
    # The lean image keeps the tags it always had: "base" and "sandbox".
    base_name, image_name = ("base", "sandbox") if name == "sandbox" else (f"{name}-base", name)
    base = content_hash(RECIPE_VERSION, DEBIAN_SUITE, packages, PRUNE)
    if name in APT_IMAGES:
        parent, added = APT_IMAGES[name]
        base = content_hash(RECIPE_VERSION, recipe(parent).base_tag, added, "apt")
    # An image without an environment keeps the hash it always had.
    env = [IMAGE_ENV[name]] if IMAGE_ENV.get(name) else []
    sandbox = content_hash(base, [hashlib.sha256(agent_file(file)).hexdigest() for file in AGENT_FILES], *env)
    return ImageRecipe(base_tag=f"cloudskills/{base_name}:{base}", sandbox_tag=f"cloudskills/{image_name}:{sandbox}")


def sandbox_image(name: str = "sandbox") -> str:
    """The tag of the sandbox image ``name`` (one of ``IMAGES``) this code expects."""
    return recipe(name).sandbox_tag


def image_exists(driver: DockerDriver, tag: str) -> bool:
    try:
        driver.client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_images(
    driver: DockerDriver, progress: Progress = stderr_progress, names: tuple[str, ...] = tuple(IMAGES)
) -> list[str]:
    """Build whatever of the sandbox images ``names`` is missing; return their tags."""
    tags = []
    for name in names:
        wanted = recipe(name)
        tags.append(wanted.sandbox_tag)
        if image_exists(driver, wanted.sandbox_tag):
            continue
        if name in APT_IMAGES and not image_exists(driver, wanted.base_tag):
            parent, added = APT_IMAGES[name]
            parent_tag = recipe(parent).base_tag
            if not image_exists(driver, parent_tag):
                build_base(driver, parent_tag, IMAGES[parent], progress)
            build_apt_layer(driver, parent_tag, wanted.base_tag, added, progress)
        elif not image_exists(driver, wanted.base_tag):
            build_base(driver, wanted.base_tag, IMAGES[name], progress)
        build_sandbox(driver, wanted.base_tag, wanted.sandbox_tag, progress, IMAGE_ENV.get(name, {}))
    return tags


def build_base(driver: DockerDriver, tag: str, packages: tuple[str, ...], progress: Progress) -> None:
    build_rootfs_image(driver, tag, packages, progress, prepare=add_sandbox_user)


def build_rootfs_image(
    driver: DockerDriver,
    tag: str,
    packages: tuple[str, ...],
    progress: Progress,
    prepare: Callable[[Path], None] | None = None,
    changes: tuple[str, ...] = (),
) -> None:
    """Import a Debian root filesystem with ``packages`` as ``tag``.

    ``prepare`` edits the root filesystem before it is imported; ``changes``
    are Dockerfile instructions (USER, CMD, ENV) applied by the import."""
    check_can_debootstrap(tag)
    progress(f"building {tag} from Debian {DEBIAN_SUITE} packages ({', '.join(packages)}); a minute or two...")
    with tempfile.TemporaryDirectory(prefix="cloudskills-rootfs-") as work:
        root = Path(work) / "root"
        debootstrap(root, packages, progress)
        for relative in PRUNE:
            shutil.rmtree(root / relative, ignore_errors=True)
        if prepare is not None:
            prepare(root)
        progress(f"importing the root filesystem as {tag}...")
        archive = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        repository, version = tag.split(":")
        driver.client.api.import_image_from_file(
            str(archive), repository=repository, tag=version, changes=list(changes) or None
        )
    progress(f"built {tag}")


def check_can_debootstrap(what: str) -> None:
    if shutil.which("debootstrap") is None:
        raise BackendUnavailable("debootstrap is not installed: run `scripts/ensure-docker` as root, then try again.")
    if os.geteuid() != 0:
        raise BackendUnavailable(f"building {what} needs root (debootstrap): run `sudo cloudskills images build`.")


def debootstrap(root: Path, packages: tuple[str, ...], progress: Progress) -> None:
    """A minimal Debian root filesystem at ``root``, with ``packages``, from Debian's archive."""
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        DEBIAN_SUITE,
        str(root),
        DEBIAN_MIRROR,
    ]
    run_with_progress(command, progress)


def add_sandbox_user(root: Path) -> None:
    """The unprivileged user every command runs as (uid and gid 1000)."""
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write("sandbox:x:1000:1000:cloudskills sandbox:/work:/bin/bash\n")
    with open(root / "etc/group", "a") as group:
        group.write("sandbox:x:1000:\n")


def run_with_progress(command: list[str], progress: Progress) -> None:
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-20:], line]
            if line.startswith(("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking", "I: Configuring")):
                continue  # one line per package is noise; the rest shows the phases
            progress(f"  {line}")
    if proc.returncode != 0:
        raise BackendUnavailable(
            f"{command[0]} failed (exit {proc.returncode}): {' | '.join(tail[-3:])}; "
            "check that Debian's package archive is reachable and try again."
        )


def apt_install(packages: tuple[str, ...]) -> str:
    """The Dockerfile line that installs Debian packages with apt, leaving no lists or docs behind."""
    return (
        "RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
        f"apt-get install -y -q --no-install-recommends {' '.join(packages)} && apt-get clean && "
        f"rm -rf {' '.join('/' + path for path in PRUNE)}"
    )


def build_apt_layer(driver: DockerDriver, parent: str, tag: str, packages: tuple[str, ...], progress: Progress) -> None:
    progress(f"building {tag}: {', '.join(packages)} from Debian {DEBIAN_SUITE} with apt on {parent}...")
    context = build_context([f"FROM {parent}", "USER root", apt_install(packages)])
    try:
        driver.client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        raise BackendUnavailable(
            f"building {tag} failed: {exc.msg}; check that Debian's package archive is reachable and try again."
        ) from exc
    progress(f"built {tag}")


def agent_layer(env: dict[str, str]) -> list[str]:
    """The Dockerfile lines that put the exec agent on a root filesystem and run it."""
    lines = [f"COPY {' '.join(AGENT_FILES)} {AGENT_DIR}/"]
    if env:
        lines.append("ENV " + " ".join(f"{name}={json.dumps(value)}" for name, value in sorted(env.items())))
        lines.append(f"ENV CLOUDSKILLS_IMAGE_ENV={json.dumps(' '.join(sorted(env)))}")
    return [*lines, "USER 1000:1000", "WORKDIR /work", f'CMD ["python3", "{AGENT_PATH}", "serve"]']


def build_context(dockerfile: list[str], files: dict[str, bytes] | None = None) -> io.BytesIO:
    """A build context: the Dockerfile, the agent's files and ``files`` (name -> bytes)."""
    context = io.BytesIO()
    entries = {"Dockerfile": "\n".join([*dockerfile, ""]).encode(), **{n: agent_file(n) for n in AGENT_FILES}}
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {**entries, **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    return context


def build_sandbox(
    driver: DockerDriver, base_tag: str, tag: str, progress: Progress, env: dict[str, str] | None = None
) -> None:
    progress(f"building {tag} (exec agent on {base_tag})...")
    context = build_context([f"FROM {base_tag}", *agent_layer(env or {})])
    try:
        driver.client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, pull=False)
    except docker.errors.BuildError as exc:
        raise BackendUnavailable(f"building {tag} failed: {exc.msg}.") from exc
    progress(f"built {tag}")
