"""Custom sandbox images: a template's image plus Debian and PyPI packages, built here.

A custom image is built in two layers, each tagged by a hash of what went into it,
so the same recipe builds once, whoever asks:

- ``cloudskills/custom-base:<hash>``: the base image's Debian root filesystem, the
  Debian packages installed by apt in a build container (from Debian's archive), and
  the PyPI packages installed by this host's pip (``pip install --target``, with the
  host's own pip configuration and indexes) as built wheels for the image's Python;
- ``cloudskills/custom:<hash>``: the exec agent on top, rebuilt in seconds whenever
  the agent changes.

Nothing is installed when a sandbox starts: the packages are in the image. A failed
build names the package that failed and why (``BuildFailed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import docker.errors

from common.errors import BackendUnavailable, CloudSkillsError, InvalidInput
from sandbox.docker import DockerDriver
from sandbox.images import (
    AGENT_FILES,
    IMAGE_ENV,
    Progress,
    agent_file,
    agent_layer,
    apt_install,
    build_context,
    content_hash,
    image_exists,
    recipe,
)

# Bump when the build steps below change in a way the recipe does not show.
CUSTOM_RECIPE_VERSION = "1"
PYTHON_VERSION = "3.11"  # Debian 12's, for which PyPI wheels are chosen
SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages"
# The wheels Debian 12 (glibc 2.36, x86-64) can load: manylinux 2.17 to 2.36.
WHEEL_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)), "manylinux2014_x86_64")
# Debian package names (Policy 5.6.1), and PyPI requirements: a name, extras, one version clause.
DEBIAN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}$")
PYPI_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?(?:\[[A-Za-z0-9._,-]{1,100}\])?"
    r"(?:(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!-]{1,40})?$"
)


# Terminal colours apt puts in its messages.
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# On both layers of a custom image: the recipe's base tag, by which unused ones are found.
LABEL_CUSTOM = "cloudskills.custom-base"
# How long a delete waits for sandboxes being removed to let go of the image.
RELEASE_WAIT_S = 10.0
# An unused custom image younger than this is left alone by ``sweep``.
SWEEP_AFTER = timedelta(hours=1)


class BuildFailed(InvalidInput):
    """A build that failed because of what it was asked to install: the message names the package."""


@dataclass(frozen=True)
class CustomRecipe:
    """What a custom image is made of: one of ``IMAGES`` and the packages added to it."""

    base_image: str
    debian: tuple[str, ...] = ()
    pypi: tuple[str, ...] = ()

    @classmethod
    def of(cls, base_image: str, debian: list[str], pypi: list[str]) -> CustomRecipe:
        """The recipe, its package lists checked, deduplicated and sorted (so two orders hash alike)."""
        for name in debian:
            if not DEBIAN_NAME.match(name):
                raise InvalidInput(
                    f"{name[:100]!r} is not a Debian package name: lower-case letters, digits and + . - "
                    "(e.g. 'jq', 'python3-yaml')."
                )
        for requirement in pypi:
            if not PYPI_REQUIREMENT.match(requirement):
                raise InvalidInput(
                    f"{requirement[:100]!r} is not a PyPI requirement this builder takes: a name, optional "
                    "[extras] and at most one version clause (e.g. 'tabulate', 'requests==2.32.3')."
                )
        return cls(base_image, tuple(sorted(set(debian))), tuple(sorted({r.lower() for r in pypi})))

    @property
    def base_tag(self) -> str:
        digest = content_hash(CUSTOM_RECIPE_VERSION, recipe(self.base_image).base_tag, self.debian, self.pypi)
        return f"cloudskills/custom-base:{digest}"

    @property
    def tag(self) -> str:
        agent = [hashlib.sha256(agent_file(name)).hexdigest() for name in AGENT_FILES]
        digest = content_hash(self.base_tag, agent, IMAGE_ENV.get(self.base_image, {}))
        return f"cloudskills/custom:{digest}"


def image_size(driver: DockerDriver, tag: str) -> int | None:
    """The image's size in bytes, or None when it is not built."""
    try:
        return int(driver.client.images.get(tag).attrs["Size"])
    except docker.errors.ImageNotFound:
        return None


def ensure_agent_layer(driver: DockerDriver, wanted: CustomRecipe, progress: Progress) -> str:
    """The image's tag, with this code's exec agent: built in seconds when only the agent changed."""
    if image_exists(driver, wanted.tag):
        return wanted.tag
    if not image_exists(driver, wanted.base_tag):
        raise BackendUnavailable(
            "this template's image is no longer on this machine: delete it with sandbox_template_delete and "
            "create it again with sandbox_template_create."
        )
    progress("adding the exec agent...")
    context = build_context([f"FROM {wanted.base_tag}", *agent_layer(IMAGE_ENV.get(wanted.base_image, {}))])
    try:
        driver.client.images.build(fileobj=context, custom_context=True, tag=wanted.tag, rm=True, pull=False)
    except docker.errors.BuildError as exc:
        raise BackendUnavailable(f"adding the exec agent to {wanted.base_tag} failed: {exc.msg}.") from exc
    return wanted.tag


def build(driver: DockerDriver, wanted: CustomRecipe, progress: Progress) -> str:
    """Build the custom image where missing and return its tag (cached by the recipe's hash)."""
    if image_exists(driver, wanted.tag):
        return wanted.tag
    if not image_exists(driver, wanted.base_tag):
        base_root = recipe(wanted.base_image).base_tag
        if not image_exists(driver, base_root):
            raise BackendUnavailable(
                f"the base image {base_root} is not built: run `cloudskills images build`, then try again."
            )
        with tempfile.TemporaryDirectory(prefix="cloudskills-custom-") as work:
            files: dict[str, bytes] = {}
            if wanted.pypi:
                files = stage_pypi(Path(work), wanted.pypi, progress)
            build_packages(driver, wanted, base_root, files, progress)
    return ensure_agent_layer(driver, wanted, progress)


def stage_pypi(work: Path, requirements: tuple[str, ...], progress: Progress) -> dict[str, bytes]:
    """Install the PyPI packages into a folder with this host's pip (its indexes and
    configuration), as wheels for the image's Python; return them as a tar to copy in."""
    progress(f"installing PyPI packages {', '.join(requirements)} for Python {PYTHON_VERSION}...")
    target = work / "pypi"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-compile",
        "--target",
        str(target),
        "--only-binary=:all:",
        *(arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)),
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--abi",
        f"cp{PYTHON_VERSION.replace('.', '')}",
        *requirements,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise pip_failure(done.stdout + done.stderr, requirements)
    archive = work / "pypi.tar"
    subprocess.run(["tar", "-C", str(target), "-cf", str(archive), "."], check=True)
    progress("PyPI packages ready")
    return {"pypi.tar": archive.read_bytes()}


def build_packages(
    driver: DockerDriver, wanted: CustomRecipe, base_root: str, files: dict[str, bytes], progress: Progress
) -> None:
    """The custom-base layer: apt in a build container, then the staged PyPI packages."""
    lines = [f"FROM {base_root}", f"LABEL {LABEL_CUSTOM}={wanted.base_tag}", "USER root"]
    if wanted.debian:
        progress(f"installing Debian packages {', '.join(wanted.debian)} with apt...")
        lines.append(apt_install(wanted.debian))
    if files:
        # ADD unpacks the tar; console scripts land in bin/, moved to where PATH finds them.
        lines += [
            f"ADD pypi.tar {SITE_PACKAGES}/",
            f"RUN if [ -d {SITE_PACKAGES}/bin ]; then cp -a {SITE_PACKAGES}/bin/. /usr/local/bin/ && "
            f"rm -rf {SITE_PACKAGES}/bin; fi",
        ]
    context = build_context(lines, files)
    log: list[str] = []
    begun = time.monotonic()
    try:
        for line in build_log(driver, context, wanted.base_tag):
            log.append(line)
            if line.startswith(("Step ", "Setting up ", "Unpacking ")):
                progress(line)
    except docker.errors.BuildError as exc:
        raise apt_failure("\n".join([*log, str(exc.msg)]), wanted.debian) from exc
    except docker.errors.APIError as exc:
        raise BackendUnavailable(f"the Docker Engine refused the build: {exc}; check `cloudskills doctor`.") from exc
    progress(f"packages installed in {time.monotonic() - begun:.0f} s")


def build_log(driver: DockerDriver, context: io.BytesIO, tag: str) -> Iterator[str]:
    """Build ``tag`` from ``context`` and yield the build's output line by line."""
    for chunk in driver.client.api.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False, decode=True
    ):
        if "error" in chunk:
            raise docker.errors.BuildError(ANSI.sub("", str(chunk["error"])).strip(), iter(()))
        for line in ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
            if line.strip():
                yield line.strip()


APT_ERRORS = (
    (re.compile(r"Unable to locate package (\S+)"), "Debian {suite} has no package named {pkg!r}"),
    (re.compile(r"Package '?([^' ]+)'? has no installation candidate"), "Debian package {pkg!r} cannot be installed"),
    (re.compile(r"Couldn't find any package by (?:glob|regex) '([^']+)'"), "Debian {suite} has no package {pkg!r}"),
)


def apt_failure(output: str, packages: tuple[str, ...]) -> CloudSkillsError:
    """What went wrong in apt, naming the package, as an agent can act on it."""
    for pattern, what in APT_ERRORS:
        found = pattern.search(output)
        if found:
            message = what.format(suite="12 (bookworm)", pkg=found.group(1))
            return BuildFailed(
                f"building the template failed: {message}. Check the name (packages.debian.org lists "
                "bookworm's packages), fix debian_packages and try again."
            )
    if "Temporary failure resolving" in output or "Could not resolve" in output:
        return BackendUnavailable(
            "building the template failed: Debian's package archive could not be reached from the build "
            "container; try again later."
        )
    depends = re.search(r"(\S+) : Depends: (.+)", output)
    if depends:
        return BuildFailed(
            f"building the template failed: Debian package {depends.group(1)!r} has unmet dependencies "
            f"({depends.group(2).strip()[:200]}); remove it from debian_packages or pick another."
        )
    tail = " | ".join(line for line in output.splitlines()[-4:] if line.strip())
    return BuildFailed(
        f"building the template failed while installing Debian packages {', '.join(packages)}: {tail[:400]}; "
        "fix debian_packages and try again."
    )


def pip_failure(output: str, requirements: tuple[str, ...]) -> CloudSkillsError:
    """What went wrong in pip, naming the requirement, as an agent can act on it."""
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        return BuildFailed(
            f"building the template failed: PyPI package {missing.group(1)!r} has no built wheel for Linux "
            f"x86-64 and CPython {PYTHON_VERSION} on the package index (no such package or version, or it "
            "ships only sources, which are not compiled here); check the name and version in pypi_packages."
        )
    conflict = re.search(r"ResolutionImpossible|conflicting dependencies", output)
    if conflict:
        return BuildFailed(
            f"building the template failed: the PyPI packages {', '.join(requirements)} need versions of "
            "their dependencies that conflict; loosen the version pins in pypi_packages."
        )
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    tail = " | ".join(errors[-3:] or output.splitlines()[-3:])
    return BuildFailed(
        f"building the template failed while installing PyPI packages {', '.join(requirements)}: {tail[:400]}; "
        "fix pypi_packages and try again."
    )


def remove(driver: DockerDriver, wanted: CustomRecipe) -> bool:
    """Remove both layers of a custom image no template uses any more, once the sandboxes
    being removed have let go of it (waiting at most RELEASE_WAIT_S); whether it is gone.
    One still in use then is left for ``sweep``."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            for tag in (wanted.tag, wanted.base_tag):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    driver.client.images.remove(tag)
            return True
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)


def sweep(driver: DockerDriver, keep: set[str]) -> list[str]:
    """Remove the custom images whose recipe (base tag) is not in ``keep`` and that no
    container uses; the tags removed."""
    removed = []
    images = driver.client.images.list(filters={"label": LABEL_CUSTOM})
    # The agent layers first: a base layer cannot go while an image is built on it.
    for image in sorted(images, key=lambda i: any("custom-base" in tag for tag in i.tags)):
        created = datetime.fromisoformat(str(image.attrs["Created"])[:26].rstrip("Z"))
        # A young image may be one a create has just built and is about to record.
        if image.labels.get(LABEL_CUSTOM) in keep or datetime.utcnow() - created < SWEEP_AFTER:
            continue
        for tag in image.tags:
            try:
                driver.client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError:
                pass  # in use, or already gone
    return removed
