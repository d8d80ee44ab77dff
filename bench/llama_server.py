"""llama.cpp's own server (`llama-server`), built here from the llama.cpp source that
llama-cpp-python's source package vendors, as released or with the fix of its AMX kernels
that our build of llama-cpp-python has (``common/llama_source``), so that the peer in
bench/inference runs the llama.cpp llama.cpp ships, or exactly the one our engine calls.

    .venv/bin/python -m bench.llama_server [--amx-fix]   # build once (prints where, and how long it took)

The sdist is fetched with pip (`pip download --no-binary :all: --no-deps`) into a
temporary dir; the build goes to a cache outside the repository
(`$XDG_CACHE_HOME/cloudskills/llama-server/<version>[-amx-fix]`), where a later run finds
it. The build uses llama.cpp's defaults as llama-cpp-python's own build does (Release,
GGML_NATIVE): the two differ only in the front end. The fix changes only AMX code: on a
CPU without AMX both builds compute alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path

import httpx2

from common import llama_source
from common.paths import user_cache


def cache_dir(version: str, amx_fix: bool = False) -> Path:
    return user_cache() / "llama-server" / (f"{version}-amx-fix" if amx_fix else version)


def built_binary(version: str, amx_fix: bool = False) -> Path | None:
    binary = cache_dir(version, amx_fix) / "build" / "bin" / "llama-server"
    return binary if binary.exists() else None


def ensure_llama_server(version: str | None = None, log: bool = True, amx_fix: bool = False) -> Path:
    """The path of a `llama-server` built from llama-cpp-python ``version``'s vendored llama.cpp
    (``amx_fix``: with the fix our build of llama-cpp-python has)."""
    version = version or installed_version("llama-cpp-python")
    found = built_binary(version, amx_fix)
    if found is not None:
        return found
    home = cache_dir(version, amx_fix)
    home.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if log:
            print(f"llama-server {version}: {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-python-sdist-") as temp:
        say("downloading llama-cpp-python's source package...")
        sdist = llama_source.download(f"llama-cpp-python=={version}", Path(temp))
        downloaded = time.monotonic()
        source = llama_source.unpack(sdist, home / "src", vendored_only=True) / "vendor" / "llama.cpp"
        if amx_fix:
            llama_source.patch_amx(source)
        build = home / "build"
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        say(f"configuring and building with {jobs} jobs (about 10 minutes on 2 cores)...")
        configure = ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"]
        configure += ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF"]
        configure += ["-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"]
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True)
    finished = time.monotonic()
    timing = {"download_s": round(downloaded - started, 1), "build_s": round(finished - downloaded, 1)}
    (home / "build.json").write_text(json.dumps({"version": version, "jobs": int(jobs), **timing}))
    say(f"built in {timing['build_s']:.0f} s (download {timing['download_s']:.0f} s): {build / 'bin/llama-server'}")
    binary = built_binary(version, amx_fix)
    assert binary is not None, "the build finished without a llama-server binary"
    return binary


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX, and so a native build of llama-server its kernels."""
    return "amx_int8" in llama_source.cpu_flags().split()


@contextlib.contextmanager
def serving(
    binary: Path, model: Path, parallel: int, context_per_slot: int, threads: int, amx_fix: bool = False
) -> Iterator[tuple[str, int]]:
    """``llama-server`` on a free loopback port with ``parallel`` slots of ``context_per_slot``
    tokens each (its continuous batching on, as by default); yields its base URL and pid once
    healthy. ``amx_fix``: the binary was built with the AMX fix."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-np", str(parallel), "-c", str(parallel * context_per_slot), "-t", str(threads)]
    command += ["-tb", str(threads), "--no-webui"]
    if cpu_has_amx() and not amx_fix:
        # As released, its AMX matrix product crashes in the first decode (llama.cpp issue 20824):
        # the best it runs with here is no AMX buffers, as our engine would without the fix.
        command += ["--no-repack"]
    with tempfile.TemporaryFile() as log:
        # A session of its own: on a kernel that shares the CPU between sessions (autogroups),
        # each engine competes on the same terms, not with the benchmark's own client.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"llama-server did not start: {log.read()[-2000:].decode(errors='replace')}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--amx-fix", action="store_true", help="with the fix of llama.cpp's AMX kernels")
    fix = parser.parse_args().amx_fix
    path = ensure_llama_server(amx_fix=fix)
    print(path)
    info = cache_dir(installed_version("llama-cpp-python"), fix) / "build.json"
    if info.exists():
        print(info.read_text())
