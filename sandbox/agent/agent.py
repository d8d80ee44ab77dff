"""The exec agent that runs inside every sandbox (stdlib only, copied into the image).

One request in, one response out: the host writes a JSON request to this
program's stdin and reads one JSON response from its stdout. A request may
write files, run one command and read files back, so a whole ``sandbox_run``
is a single round trip. The agent, not the host, enforces the command's
timeout (it kills the command's whole process group) and bounds its output,
so a runaway program can neither hang the host nor flood its memory.

Request:  {"writes": [{"path", "data_b64", "mode"?}],
           "exec": {"argv" | "code"+"language", "timeout_s", "max_output", "env", "cwd", "stdin_b64"}?,
           "reads": [{"path", "max_bytes"}], "list": {"path"}?}
Response: {"ok": true, "writes": [...], "exec": {...}, "reads": [...], "list": [...]}
          or {"ok": false, "kind": "invalid_input" | "not_found", "error": "..."}
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import time

WORK_DIR = "/work"
INTERPRETERS = {"python": ["python3", "-u"], "bash": ["bash"]}
# After the command exits, wait this long for its pipes to close: a
# background child that keeps them open must not hold the answer back.
PIPE_GRACE_S = 0.2


class AgentError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def resolve(path: str) -> str:
    """An absolute path; relative paths are taken from the work dir."""
    if not path:
        raise AgentError("invalid_input", "path is empty: give a file path such as 'data.txt' or '/work/data.txt'.")
    return os.path.normpath(path if path.startswith("/") else os.path.join(WORK_DIR, path))


def write_file(spec: dict) -> dict:
    path = resolve(spec["path"])
    data = base64.b64decode(spec["data_b64"])
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        if spec.get("mode") is not None:
            os.chmod(path, int(spec["mode"]))
    except OSError as exc:
        raise AgentError("invalid_input", f"cannot write {path}: {exc.strerror}; write under {WORK_DIR} or /tmp.")
    return {"path": path, "size": len(data)}


def read_file(spec: dict) -> dict:
    path = resolve(spec["path"])
    max_bytes = int(spec.get("max_bytes", 1 << 20))
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise AgentError("not_found", f"no file {path} in the sandbox: list the directory to see what is there.")
    except IsADirectoryError:
        raise AgentError("invalid_input", f"{path} is a directory: list it, or read a file inside it.")
    except OSError as exc:
        raise AgentError("invalid_input", f"cannot read {path}: {exc.strerror}.")
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    return {"path": path, "size": size, "truncated": truncated, "data_b64": base64.b64encode(data).decode()}


def list_dir(spec: dict) -> list[dict]:
    path = resolve(spec.get("path") or WORK_DIR)
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise AgentError("not_found", f"no directory {path} in the sandbox: list {WORK_DIR} to see what is there.")
    except NotADirectoryError:
        raise AgentError("invalid_input", f"{path} is a file, not a directory: read it instead.")
    except OSError as exc:
        raise AgentError("invalid_input", f"cannot list {path}: {exc.strerror}.")
    entries = []
    for name in names[:10000]:
        try:
            info = os.lstat(os.path.join(path, name))
        except OSError:
            continue
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "link" if stat.S_ISLNK(info.st_mode) else "file"
        entries.append({"name": name, "path": os.path.join(path, name), "type": kind, "size": info.st_size})
    return entries


def command_argv(spec: dict) -> tuple[list[str], str | None]:
    """The argv to run, and the temporary script file it runs, if any."""
    if spec.get("argv"):
        return [str(part) for part in spec["argv"]], None
    language = spec.get("language", "python")
    if language not in INTERPRETERS:
        raise AgentError("invalid_input", f"unknown language {language!r}: use one of {sorted(INTERPRETERS)}.")
    fd, script = tempfile.mkstemp(prefix=".cloudskills-", suffix=".py" if language == "python" else ".sh")
    with os.fdopen(fd, "w") as handle:
        handle.write(spec.get("code", ""))
    return [*INTERPRETERS[language], script], script


class BoundedBuffer:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]

    def result(self) -> dict:
        return {
            "data_b64": base64.b64encode(bytes(self.kept)).decode(),
            "total_bytes": self.total,
            "truncated": self.total > len(self.kept),
        }


def run_command(spec: dict) -> dict:
    argv, script = command_argv(spec)
    try:
        return supervise(argv, spec)
    finally:
        if script:
            os.unlink(script)


def supervise(argv: list[str], spec: dict) -> dict:
    timeout_s = float(spec.get("timeout_s", 60))
    limit = int(spec.get("max_output", 64 * 1024))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8", "USER": "sandbox"}
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    stdin_data = base64.b64decode(spec["stdin_b64"]) if spec.get("stdin_b64") else b""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=resolve(spec.get("cwd") or WORK_DIR),
            env=env,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise AgentError("invalid_input", f"command not found: {argv[0]!r}; check its name or give a full path.")
    except (NotADirectoryError, PermissionError, OSError) as exc:
        raise AgentError("invalid_input", f"cannot start {argv[0]!r}: {exc.strerror or exc}.")
    if stdin_data:
        try:
            proc.stdin.write(stdin_data)
        except BrokenPipeError:
            pass
        proc.stdin.close()

    buffers = {proc.stdout: BoundedBuffer(limit), proc.stderr: BoundedBuffer(limit)}
    selector = selectors.DefaultSelector()
    for pipe in buffers:
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe, selectors.EVENT_READ)
    deadline = started + timeout_s
    timed_out = False
    exited_at = None
    while selector.get_map():
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > PIPE_GRACE_S:
            break
        if exited_at is None and now >= deadline:
            timed_out = True
            kill_group(proc.pid)
            proc.wait()
            exited_at = time.monotonic()
        for key, _ in selector.select(timeout=0.05):
            try:
                chunk = os.read(key.fileobj.fileno(), 65536)
            except BlockingIOError:
                continue
            if chunk:
                buffers[key.fileobj].feed(chunk)
            else:
                selector.unregister(key.fileobj)
    exit_code = proc.wait()
    if exit_code < 0:
        exit_code = 128 - exit_code  # shell convention: killed by signal N -> 128 + N
    return {
        "exit_code": exit_code,
        "timed_out": timed_out,
        "duration_ms": int((time.monotonic() - started) * 1000),
        "stdout": buffers[proc.stdout].result(),
        "stderr": buffers[proc.stderr].result(),
    }


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def handle(request: dict) -> dict:
    response: dict = {"ok": True}
    response["writes"] = [write_file(spec) for spec in request.get("writes", [])]
    if request.get("exec"):
        response["exec"] = run_command(request["exec"])
    response["reads"] = []
    for spec in request.get("reads", []):
        try:
            response["reads"].append(read_file(spec))
        except AgentError as exc:
            if "exec" not in response:
                raise
            # After a command ran, a missing output file must not hide its result.
            response["reads"].append({"path": spec["path"], "error": str(exc)})
    if request.get("list") is not None:
        response["list"] = list_dir(request["list"])
    return response


def main() -> None:
    try:
        response = handle(json.loads(sys.stdin.buffer.read() or b"{}"))
    except AgentError as exc:
        response = {"ok": False, "kind": exc.kind, "error": str(exc)}
    except (ValueError, KeyError, TypeError) as exc:
        response = {"ok": False, "kind": "invalid_input", "error": f"bad request to the sandbox agent: {exc}"}
    sys.stdout.write(json.dumps(response))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
