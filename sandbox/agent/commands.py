"""Commands inside the sandbox, for the agent (stdlib only): one-off processes
under a timeout with bounded output, and the persistent Python interpreter.

The agent, not the host, enforces a command's timeout (it kills the command's
whole process group) and bounds its output, so a runaway program can neither
hang the host nor flood its memory.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import tempfile
import time

from files import WORK_DIR, AgentError, resolve

KERNEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py")
INTERPRETERS = {"python": ["python3", "-u"], "bash": ["bash"]}
# After the command exits, wait this long for its pipes to close: a
# background child that keeps them open must not hold the answer back.
PIPE_GRACE_S = 0.2


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
        # The kept bytes travel as a blob of the answer (see agent.py).
        return {"data": bytes(self.kept), "total_bytes": self.total, "truncated": self.total > len(self.kept)}


def run_command(spec: dict, streamer=None) -> dict:
    """Run the command to its end; ``streamer`` (streaming.py) sends its output as it comes."""
    if spec.get("persistent") and spec.get("language") == "python" and not spec.get("argv"):
        return KERNEL.run(spec, streamer)
    argv, script = command_argv(spec)
    try:
        return supervise(argv, spec, streamer)
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


# What the image sets for every command (a template's ENV, e.g. MPLBACKEND), by name.
IMAGE_ENV = {
    name: os.environ[name] for name in os.environ.get("CLOUDSKILLS_IMAGE_ENV", "").split() if name in os.environ
}


def child_env(spec: dict) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8", "USER": "sandbox", **IMAGE_ENV}
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

    def __init__(self, stdout, stderr, limit: int, streamer=None) -> None:
        self.buffers = {stdout: BoundedBuffer(limit), stderr: BoundedBuffer(limit)}
        self.names = {stdout: "stdout", stderr: "stderr"}
        self.streamer = streamer
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
            if self.streamer is not None:
                self.streamer.feed(self.names[pipe], chunk)

    def tick(self) -> None:
        if self.streamer is not None:
            self.streamer.tick()

    def drain(self) -> None:
        """Everything already in the pipes, without waiting for more."""
        for pipe in list(self.selector.get_map().values()):
            self.read(pipe.fileobj)

    @property
    def open(self) -> bool:
        return bool(self.selector.get_map())

    def result(self, stdout, stderr) -> dict:
        return {"stdout": self.buffers[stdout].result(), "stderr": self.buffers[stderr].result()}


def supervise(argv: list[str], spec: dict, streamer=None) -> dict:
    timeout_s = float(spec.get("timeout_s", 60))
    stdin_data = spec.get("stdin") or b""
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
    pump = Pump(proc.stdout, proc.stderr, int(spec.get("max_output", 64 * 1024)), streamer)
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
        pump.tick()
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

    def run(self, spec: dict, streamer=None) -> dict:
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
        pump = Pump(stdout, stderr, int(spec.get("max_output", 64 * 1024)), streamer)
        deadline = started + float(spec.get("timeout_s", 60))
        # While streaming, wake up often enough to send what came.
        wait_at_most = 0.05 if streamer is not None else None
        pump.selector.register(self.control, selectors.EVENT_READ)
        answer = None
        finished = False
        while not finished:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in pump.selector.select(timeout=left if wait_at_most is None else min(left, wait_at_most)):
                if key.fileobj is self.control:
                    answer = recv_frame(self.control)  # None: the kernel died (exit, crash, OOM)
                    finished = True
                else:
                    pump.read(key.fileobj)
            pump.tick()
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
