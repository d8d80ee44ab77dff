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
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

WORK_DIR = "/work"
SOCKET_PATH = "/tmp/.cloudskills/agent.sock"
KERNEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py")
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
    if spec.get("persistent") and spec.get("language") == "python" and not spec.get("argv"):
        return KERNEL.run(spec)
    argv, script = command_argv(spec)
    try:
        return supervise(argv, spec)
    finally:
        if script:
            os.unlink(script)


def checked_env(env: dict) -> dict:
    """The request's environment variables, refused whole if one cannot be set."""
    checked = {}
    for name, value in env.items():
        name, value = str(name), str(value)
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise AgentError(
                "invalid_input",
                f"cannot set the environment variable {name[:100]!r}: a name is letters, digits and '_', "
                "and neither a name nor a value may hold a NUL byte.",
            )
        checked[name] = value
    return checked


def child_env(spec: dict) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8", "USER": "sandbox"}
    env.update(checked_env(spec.get("env") or {}))
    return env


def start(
    argv: list[str], cwd: str, env: dict, stdin: int, pass_fds: tuple = (), output: int = subprocess.PIPE
) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=output,
            stderr=output,
            cwd=resolve(cwd),
            env=env,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    except FileNotFoundError:
        raise AgentError("invalid_input", f"command not found: {argv[0]!r}; check its name or give a full path.")
    except (NotADirectoryError, PermissionError, OSError) as exc:
        raise AgentError("invalid_input", f"cannot start {argv[0]!r}: {exc.strerror or exc}.")


class Pump:
    """Reads a child's stdout and stderr into bounded buffers until told to stop."""

    def __init__(self, stdout, stderr, limit: int) -> None:
        self.buffers = {stdout: BoundedBuffer(limit), stderr: BoundedBuffer(limit)}
        self.selector = selectors.DefaultSelector()
        for pipe in self.buffers:
            os.set_blocking(pipe.fileno(), False)
            self.selector.register(pipe, selectors.EVENT_READ)

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout=timeout):
            self.read(key.fileobj)

    def read(self, pipe) -> None:
        while True:
            try:
                chunk = os.read(pipe.fileno(), 65536)
            except BlockingIOError:
                return
            if not chunk:
                self.selector.unregister(pipe)
                return
            self.buffers[pipe].feed(chunk)

    def drain(self) -> None:
        """Everything already in the pipes, without waiting for more."""
        for pipe in list(self.selector.get_map().values()):
            self.read(pipe.fileobj)

    @property
    def open(self) -> bool:
        return bool(self.selector.get_map())

    def result(self, stdout, stderr) -> dict:
        return {"stdout": self.buffers[stdout].result(), "stderr": self.buffers[stderr].result()}


def supervise(argv: list[str], spec: dict) -> dict:
    timeout_s = float(spec.get("timeout_s", 60))
    stdin_data = base64.b64decode(spec["stdin_b64"]) if spec.get("stdin_b64") else b""
    started = time.monotonic()
    proc = start(
        argv, spec.get("cwd") or WORK_DIR, child_env(spec), subprocess.PIPE if stdin_data else subprocess.DEVNULL
    )
    if stdin_data:
        try:
            proc.stdin.write(stdin_data)
        except BrokenPipeError:
            pass
        proc.stdin.close()
    pump = Pump(proc.stdout, proc.stderr, int(spec.get("max_output", 64 * 1024)))
    deadline = started + timeout_s
    timed_out = False
    exited_at = None
    while pump.open:
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
        pump.poll(0.05)
    proc.stdout.close()
    proc.stderr.close()
    exit_code = proc.wait()
    if exit_code < 0:
        exit_code = 128 - exit_code  # shell convention: killed by signal N -> 128 + N
    return {
        "exit_code": exit_code,
        "timed_out": timed_out,
        "duration_ms": int((time.monotonic() - started) * 1000),
        **pump.result(proc.stdout, proc.stderr),
    }


def write_frame(stream, payload: bytes) -> None:
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def read_exactly(stream, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream) -> bytes | None:
    """One length-prefixed frame, or None at the end of the stream."""
    header = read_exactly(stream, 4)
    if header is None:
        return None
    return read_exactly(stream, struct.unpack(">I", header)[0])


class Kernel:
    """The sandbox's persistent Python interpreter (kernel.py), started ahead of need.

    Each run hands the kernel a fresh pair of stdout and stderr pipes along
    with its code, and the kernel lets go of them when the run ends. A process
    the code left running keeps only its own run's pipes, which this agent
    closes once it has the answer: it can never write into a later call's output."""

    def __init__(self) -> None:
        self.proc = None
        self.control = None  # our end of a socket pair: code and pipes go out, answers come back

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.control is not None:  # the line to a kernel that died between runs
            self.control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = ["python3", "-u", KERNEL_PATH, str(theirs.fileno())]
        try:
            # Between runs the kernel's own stdout and stderr lead nowhere.
            self.proc = start(
                argv, WORK_DIR, child_env({}), subprocess.DEVNULL, (theirs.fileno(),), output=subprocess.DEVNULL
            )
        except AgentError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours

    def send(self, frame: bytes, pipes: tuple) -> None:
        """The frame's header travels with the run's pipes; the rest follows."""
        header = struct.pack(">I", len(frame))
        socket.send_fds(self.control, [header], list(pipes))
        self.control.sendall(frame)

    def run(self, spec: dict) -> dict:
        env = checked_env(spec.get("env") or {})
        self.ensure()
        started = time.monotonic()
        frame = json.dumps({"code": spec.get("code", ""), "env": env}).encode()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        stdout = os.fdopen(out_read, "rb", buffering=0)
        stderr = os.fdopen(err_read, "rb", buffering=0)
        try:
            self.send(frame, (out_write, err_write))
        except OSError:
            stdout.close()
            stderr.close()
            self.kill()
            raise AgentError("invalid_input", "the Python interpreter had exited: run the code again.")
        finally:
            os.close(out_write)
            os.close(err_write)
        pump = Pump(stdout, stderr, int(spec.get("max_output", 64 * 1024)))
        deadline = started + float(spec.get("timeout_s", 60))
        pump.selector.register(self.control, selectors.EVENT_READ)
        answer = None
        finished = False
        while not finished:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in pump.selector.select(timeout=left):
                if key.fileobj is self.control:
                    answer = recv_frame(self.control)  # None: the kernel died (exit, crash, OOM)
                    finished = True
                else:
                    pump.read(key.fileobj)
        pump.selector.unregister(self.control)
        # The kernel flushed and let go of the pipes before it answered: what it
        # wrote is all there. What a leftover process writes later goes nowhere.
        pump.drain()
        pump.selector.close()
        result = pump.result(stdout, stderr)
        stdout.close()
        stderr.close()
        timed_out = not finished
        exit_code = self.kill() if answer is None else int(json.loads(answer)["exit_code"])
        return {
            "exit_code": exit_code,
            "timed_out": timed_out,
            "duration_ms": int((time.monotonic() - started) * 1000),
            **result,
        }

    def kill(self) -> int:
        """Stop the interpreter (its state is lost; the next run starts a new one)."""
        kill_group(self.proc.pid)
        code = self.proc.wait()
        self.control.close()
        self.proc = None
        return 128 - code if code < 0 else code


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def recv_frame(sock: socket.socket) -> bytes | None:
    """One length-prefixed frame from a socket, or None once it is closed."""
    header = recv_exactly(sock, 4)
    return None if header is None else recv_exactly(sock, struct.unpack(">I", header)[0])


KERNEL = Kernel()


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


def answer(request: dict) -> dict:
    """The response to one request; never raises, so no request can stop the agent."""
    try:
        if not isinstance(request, dict):
            raise TypeError("the request is not a JSON object")
        return handle(request)
    except AgentError as exc:
        return {"ok": False, "kind": exc.kind, "error": str(exc)}
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "kind": "invalid_input", "error": f"bad request to the sandbox agent: {exc}"}
    except Exception as exc:  # RecursionError, MemoryError, ...: refuse this request, serve the next
        detail = f"{type(exc).__name__}: {exc}"[:200]
        return {
            "ok": False,
            "kind": "invalid_input",
            "error": f"the sandbox could not carry out this request ({detail}); make it smaller or simpler.",
        }


def answer_frame(frame: bytes) -> bytes:
    try:
        request = json.loads(frame)
    except ValueError:
        request, response = None, {"ok": False, "kind": "invalid_input", "error": "the request is not JSON"}
    else:
        response = answer(request)
    response["id"] = request.get("id") if isinstance(request, dict) else None
    return json.dumps(response).encode()


def serve() -> None:
    """The sandbox's entry process.

    Requests come as frames on stdin (the host's attached channel, the fast
    path) and on a unix socket inside the sandbox (reached by `agent.py relay`
    through `docker exec`, for any other process). Once the attached stdin
    closes, as when the server that attached restarts, the socket still
    serves: the sandbox, its files and its interpreter live on."""
    # Unbuffered: a buffered reader could hold a request that select() then never reports.
    requests = os.fdopen(0, "rb", buffering=0)
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the real stdout
    os.chdir(WORK_DIR)
    os.makedirs(os.path.dirname(SOCKET_PATH), mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCKET_PATH)
    listener.listen(16)
    KERNEL.ensure()  # warm: the first code runs without an interpreter start
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                try:
                    connection, _ = listener.accept()
                    with connection, connection.makefile("rwb") as stream:
                        frame = read_frame(stream)
                        if frame is not None:
                            write_frame(stream, answer_frame(frame))
                except OSError:  # the relay went away: its answer has nowhere to go
                    pass
                continue
            # Requests on stdin are lines of ASCII JSON: Docker reads the attached
            # stdin for its detach keys, so no control byte may ever pass there.
            line = requests.readline()
            if not line:
                selector.unregister(requests)
                continue
            write_frame(answers, answer_frame(line))


def relay() -> None:
    """One request from stdin to the resident agent's socket, its answer to stdout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(SOCKET_PATH)
        with connection.makefile("rwb") as stream:
            write_frame(stream, sys.stdin.buffer.read() or b"{}")
            frame = read_frame(stream)
    sys.stdout.buffer.write(frame or b'{"ok": false, "kind": "invalid_input", "error": "the agent did not answer"}')
    sys.stdout.flush()


def main() -> None:
    mode = sys.argv[1:2]
    if mode == ["serve"]:
        serve()
    elif mode == ["relay"]:
        relay()
    else:  # one request, handled in this process
        sys.stdout.write(json.dumps(answer(json.loads(sys.stdin.buffer.read() or b"{}"))))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
