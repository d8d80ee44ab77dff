"""llama-cpp-python built from its source package with one fix to the llama.cpp it vendors.

ggml's AMX matrix product (Intel Sapphire Rapids and later) builds its tile configuration
on the stack and hands its address to ``ldtilecfg``; GCC keeps only some of the stores
before it (32 of the 64 bytes are zeroed in the disassembly), the configuration loaded is
invalid, and the first decode dies of a general protection fault (llama.cpp issue 20824;
the same fix is pull request 26954, not in the llama.cpp that llama-cpp-python 0.3.36
vendors). We put the configuration in static storage, and add an exported marker symbol
so that the engine can tell a fixed build from any other (``skills/inference/engines/
llama_cpu.py`` keeps AMX off without it). Measured on a 2-core Sapphire Rapids with the
default SmolLM2-135M Q4_1, llama-bench: prompt 1695 tokens/s against 346 without AMX,
one sequence's decode 274 against 107.

Only the standard library: ``scripts/setup`` runs this before the project's dependencies
are installed (``python -m common.llama_source install``), and ``bench/llama_server``
builds the peer llama-server from the same patched source.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

MARKER = "cloudskills_amx_tile_config_fixed"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_MMQ = Path("ggml/src/ggml-cpu/amx/mmq.cpp")
_STACK_CONFIG = "    alignas(64) tile_config_t tc = {};\n"
_CONFIG_BODY_END = "    _tile_loadconfig(&tc);\n"


def requirement() -> str:
    """The project's own requirement on llama-cpp-python (one place says which versions)."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (found,) = [d for d in dependencies if d.startswith("llama-cpp-python")]
    return str(found)


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


def patch_amx(llama_cpp: Path) -> bool:
    """Fix the AMX tile configuration in a llama.cpp source tree; whether it now carries the fix.

    Idempotent. A tree whose code is not the one this fix knows is left as it is (False), so
    its build has no marker and the engine keeps AMX off there.
    """
    mmq = llama_cpp / _MMQ
    text = mmq.read_text()
    if MARKER in text:
        return True
    start = text.find("inline void ggml_tile_config_init(void) {")
    stack = text.find(_STACK_CONFIG, start)
    end = text.find(_CONFIG_BODY_END, stack)
    if start < 0 or stack < 0 or end < 0:
        return False
    assignments = text[stack + len(_STACK_CONFIG) : end]
    maker = (
        "static tile_config_t ggml_tile_config_make(void) {\n"
        "    tile_config_t tc = {};\n" + assignments + "    return tc;\n}\n\n"
    )
    init = (
        "    // cloudskills: in static storage, whole before ldtilecfg reads it; on the stack the\n"
        "    // compiler dropped some of its stores (llama.cpp issue 20824)\n"
        "    alignas(64) static const tile_config_t tc = ggml_tile_config_make();\n"
    )
    text = text[:start] + maker + text[start:stack] + init + text[end:]
    text += (
        "\n// cloudskills: marks a build with the fix above (skills/inference/engines/llama_cpu.py)\n"
        f'extern "C" __attribute__((visibility("default"))) const int {MARKER} = 1;\n'
    )
    mmq.write_text(text)
    return True


def installed_has_fix() -> bool:
    """Whether the llama-cpp-python installed here was built with ``patch_amx``."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return False
    library = Path(spec.origin).parent / "lib" / "libggml-cpu.so"
    try:
        return hasattr(ctypes.CDLL(str(library)), MARKER)
    except OSError:
        return False


def wheel_cache() -> Path:
    """Where the wheel built here is kept for the next .venv on this machine, by what it was
    built from (the requirement, and this module, which holds the fix), for which Python and
    which CPU (llama.cpp builds for the CPU it is built on)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(f"{requirement()}|{sys.version}|{cpu_flags()}".encode())
    key.update(Path(__file__).read_bytes())
    return base / "cloudskills" / "llama-cpp-python" / key.hexdigest()[:16]


def cpu_flags() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in info.splitlines() if line.startswith("flags")), "")


def install() -> None:
    """Install llama-cpp-python built from its patched source, unless the installed one has the
    fix: the wheel a build here left in ``wheel_cache``, or a new build (about 8 minutes)."""
    if installed_has_fix():
        return
    cache = wheel_cache()
    if not list(cache.glob("llama_cpp_python-*.whl")):
        build_wheel(cache)
    (wheel,) = cache.glob("llama_cpp_python-*.whl")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "uninstall", "-y", "llama-cpp-python"], check=True, capture_output=True)
    subprocess.run([*pip, "install", str(wheel)], check=True)


def build_wheel(into: Path) -> None:
    spec = requirement()
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
    say = functools.partial(print, file=sys.stderr)
    say(f"cloudskills: building {spec} from source with llama.cpp's AMX fix, {jobs} jobs at a time")
    say("cloudskills: (once on this machine: about 8 minutes on 2 cores)...")
    with tempfile.TemporaryDirectory(prefix="llama-cpp-python-") as temp:
        project = unpack(download(spec, Path(temp)), Path(temp))
        if not patch_amx(project / "vendor" / "llama.cpp"):
            say("cloudskills: this llama.cpp's AMX code is not the one the fix knows; built as it is")
        built = Path(temp) / "wheel"
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "wheel", "--no-deps"]
        subprocess.run(
            [*pip, "-w", str(built), str(project)], check=True, env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": jobs}
        )
        # Whole or not at all: a build or copy cut short leaves no wheel to find.
        partial = into.with_name(f"{into.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(built, partial)
        shutil.rmtree(into, ignore_errors=True)
        partial.rename(into)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m common.llama_source install")
    install()
