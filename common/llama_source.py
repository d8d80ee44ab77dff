"""llama-cpp-python built from its source package with one fix to the llama.cpp it vendors.

ggml's AMX matrix product (Intel Sapphire Rapids and later) builds its tile configuration
on the stack and hands its address to ``ldtilecfg``; GCC keeps only some of the stores
before it (the released build zeroes 32 of the 64 bytes and sets the palette, never the
rows and columns), the configuration loaded is invalid, and the first decode dies
(llama.cpp issue 20824; the same fix is in pull request 26954, not in the llama.cpp that
llama-cpp-python 0.3.36 vendors). We put the configuration in static storage, and add an
exported marker symbol whose value is the fix's version, so that the engine can tell a
fixed build from any other (``skills/inference/engines/llama_cpu.py`` keeps AMX off
without it). Measured on a 2-core Sapphire Rapids with the default SmolLM2-135M Q4_1,
llama-bench: prompt 1695 tokens/s against 346 without AMX, one sequence's decode 274
against 107.

Only the standard library: ``scripts/setup`` runs this before the project's dependencies
are installed (``python -m common.llama_source install``), and ``bench/llama_server``
builds the peer llama-server from the same patched source. The fix is for the one version
``pyproject.toml`` pins: a source it does not know is refused, not built unfixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.paths import user_cache

MARKER = "cloudskills_amx_tile_config_fixed"
FIX_VERSION = 1  # the marker's value: raise it when the patch changes, and setup rebuilds
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_MMQ = Path("ggml/src/ggml-cpu/amx/mmq.cpp")
_INIT = "inline void ggml_tile_config_init(void) {\n"
_STACK_CONFIG = "    alignas(64) tile_config_t tc = {};\n"
_LOAD = "    _tile_loadconfig(&tc);\n"
# What may stand between the two: assignments of numbers to the configuration's fields.
_ASSIGNMENTS = re.compile(r"(\s*tc\.\w+(\[\d+\])?\s*=\s*\d+;)*\s*")


class UnknownSource(RuntimeError):
    """A llama.cpp whose AMX code is not the one the fix was written for."""


def requirement() -> str:
    """The project's own requirement on llama-cpp-python, an exact version (pyproject.toml)."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (found,) = [d for d in dependencies if d.startswith("llama-cpp-python")]
    return str(found)


def pinned_version() -> str:
    name, _, version = requirement().partition("==")
    if not version or name != "llama-cpp-python":
        raise UnknownSource(f"pyproject.toml must pin llama-cpp-python exactly (==), not {requirement()!r}")
    return version


def download(spec: str, into: Path) -> Path:
    """llama-cpp-python's source package for ``spec`` (e.g. ``llama-cpp-python==0.3.36``), via pip."""
    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q", "-d", str(into)]
    subprocess.run([*pip, spec], check=True)
    (sdist,) = into.glob("llama_cpp_python-*.tar.gz")
    return sdist


def unpack(sdist: Path, into: Path, vendored_only: bool = False) -> Path:
    """Unpack the source package; returns the project's dir (``vendored_only``: just llama.cpp)."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if not vendored_only or "/vendor/llama.cpp/" in m.name]
        archive.extractall(into, members=members, filter="data")
    (project,) = [p for p in into.glob("llama_cpp_python-*") if p.is_dir()]
    return project


def patch_amx(llama_cpp: Path) -> None:
    """Fix the AMX tile configuration in a llama.cpp source tree (idempotent).

    Raises ``UnknownSource``, leaving the tree as it was, where ``ggml_tile_config_init`` is
    not the function the fix knows: a configuration on the stack, only field assignments
    between it and ``_tile_loadconfig``, all inside the function.
    """
    mmq = llama_cpp / _MMQ
    text = mmq.read_text()
    if MARKER in text:
        return
    start = text.find(_INIT)
    body_end = text.find("\n}\n", start)
    stack = text.find(_STACK_CONFIG, start, body_end)
    load = text.find(_LOAD, stack, body_end)
    if min(start, body_end, stack, load) < 0:
        raise UnknownSource(f"{mmq}: no ggml_tile_config_init with a tile configuration on the stack")
    assignments = text[stack + len(_STACK_CONFIG) : load]
    if not _ASSIGNMENTS.fullmatch(assignments):
        raise UnknownSource(f"{mmq}: ggml_tile_config_init does more than fill in its configuration")
    maker = (
        "static tile_config_t ggml_tile_config_make(void) {\n"
        "    tile_config_t tc = {};\n" + assignments + "    return tc;\n}\n\n"
    )
    init = (
        "    // cloudskills: in static storage, whole before ldtilecfg reads it; on the stack the\n"
        "    // compiler dropped some of its stores (llama.cpp issue 20824)\n"
        "    alignas(64) static const tile_config_t tc = ggml_tile_config_make();\n"
    )
    text = text[:start] + maker + text[start:stack] + init + text[load:]
    text += (
        "\n// cloudskills: marks a build with the fix above, by its version (common/llama_source.py)\n"
        f'extern "C" __attribute__((visibility("default"))) const int {MARKER} = {FIX_VERSION};\n'
    )
    mmq.write_text(text)


def fix_in(library: Any) -> int:
    """The fix's version a loaded llama.cpp library (or one it links) carries; 0 for none."""
    try:
        return int(ctypes.c_int.in_dll(library, MARKER).value)
    except ValueError:  # no such symbol
        return 0


def installed_has_fix() -> bool:
    """Whether the llama-cpp-python installed here is the pinned version, built with this fix
    (asked of a fresh interpreter: this one may hold a library that was replaced since)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        if version("llama-cpp-python") != pinned_version():
            return False
    except PackageNotFoundError:
        return False
    ask = f"import ctypes; from llama_cpp import llama_cpp as b; print(ctypes.c_int.in_dll(b._lib, {MARKER!r}).value)"
    answer = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
    return answer.returncode == 0 and answer.stdout.strip() == str(FIX_VERSION)


def wheel_cache() -> Path:
    """Where the wheel built here is kept for the next .venv on this machine, by what it was
    built from (the requirement, the fix's version and llama-cpp-python's build settings),
    for which Python and which CPU (llama.cpp builds for the CPU it is on)."""
    settings = "|".join(os.environ.get(name, "") for name in ("CMAKE_ARGS", "FORCE_CMAKE"))
    key = hashlib.sha256(f"{requirement()}|{FIX_VERSION}|{sys.version}|{cpu_flags()}|{settings}".encode())
    return user_cache() / "llama-cpp-python" / key.hexdigest()[:16]


def cpu_flags() -> str:
    """The first ``flags`` line of /proc/cpuinfo ("" where there is none)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in info.splitlines() if line.startswith("flags")), "")


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One setup at a time builds and installs (``scripts/serve`` runs setup at every start)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install() -> None:
    """Install llama-cpp-python built from its patched source, unless the installed one has the
    fix: the wheel a build here left in ``wheel_cache``, or a new build (about 8 minutes).
    Where one that imports is installed already and the build fails (no network, say), it
    stays, with a warning: the engine keeps AMX off in a build without the fix."""
    if installed_has_fix():
        return
    cache = wheel_cache()
    try:
        with locked(cache):
            if installed_has_fix():  # another setup did it meanwhile
                return
            if not list(cache.glob("llama_cpp_python-*.whl")):
                build_wheel(cache)
            (wheel,) = cache.glob("llama_cpp_python-*.whl")
            pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "install"]
            # Replaced in place (never a moment without one), then what it needs if missing.
            subprocess.run([*pip, "--force-reinstall", "--no-deps", str(wheel)], check=True)
            subprocess.run([*pip, str(wheel)], check=True)
    except (subprocess.CalledProcessError, UnknownSource) as failed:
        if not _imports():
            raise
        print(f"cloudskills: kept the llama-cpp-python installed, without the AMX fix: {failed}", file=sys.stderr)


def _imports() -> bool:
    done = subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True)
    return done.returncode == 0


def build_wheel(into: Path) -> None:
    """Build the pinned llama-cpp-python with the fix into ``into``, whole or not at all."""
    spec = f"llama-cpp-python=={pinned_version()}"
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
    say = functools.partial(print, file=sys.stderr)
    say(f"cloudskills: building {spec} from source with llama.cpp's AMX fix, {jobs} jobs at a time")
    say("cloudskills: (once on this machine: about 8 minutes on 2 cores)...")
    with tempfile.TemporaryDirectory(prefix="llama-cpp-python-") as temp:
        project = unpack(download(spec, Path(temp)), Path(temp))
        patch_amx(project / "vendor" / "llama.cpp")
        built = Path(temp) / "wheel"
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "wheel", "--no-deps"]
        environment = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": jobs}
        subprocess.run([*pip, "-w", str(built), str(project)], check=True, env=environment)
        # Copied beside the cache, then renamed: a build or copy cut short leaves no wheel to find.
        partial = Path(tempfile.mkdtemp(prefix=f"{into.name}.", dir=into.parent))
        shutil.copytree(built, partial, dirs_exist_ok=True)
        shutil.rmtree(into, ignore_errors=True)
        partial.rename(into)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m common.llama_source install")
    install()
