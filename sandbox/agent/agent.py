"""The exec agent that runs inside every sandbox (stdlib only, copied into the image).

One request in, one answer out (framing in ``wire.py``). A request may write
files, run one command and read files back, so a whole ``sandbox_run`` is a
single round trip; it may also set how long the sandbox lives idle
(``lifetime.py``).

Request:  {"blobs": [sizes], "writes": [{"path", "blob", "mode"?}],
           "exec": {"argv" | "code"+"language", "timeout_s", "max_output", "env", "cwd", "stdin_blob"?}?,
           "reads": [{"path", "max_bytes"}], "list": {"path"}?, "idle_s"?}
           followed by the blobs' raw bytes
Answer:   {"ok": true, "writes": [...], "exec": {"stdout": {"blob", "total_bytes", "truncated"}, ...},
           "reads": [{"path", "size", "truncated", "blob"}], "list": [...], "blobs": [sizes]}
          or {"ok": false, "kind": "invalid_input" | "not_found", "error": "..."}
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time

from commands import KERNEL, run_command
from files import OUTPUTS_DIR, WORK_DIR, AgentError, collect, list_dir, read_file, receive_file, snapshot
from lifetime import Lifetime
from processes import PROCESSES
from streaming import Streamer
from wire import CHUNK, Closed, Reader, send_answer, write_all

SOCKET_PATH = "/tmp/.cloudskills/agent.sock"


def discard(chunk) -> None:
    pass


def receive_blobs(request: dict, reader: Reader) -> bytes:
    """Consume every blob the request announced: writes go to their files as they
    arrive, a command's stdin is kept; return that stdin. The first write that
    fails is raised once all blobs are in, so the next request starts in place."""
    sizes = [int(size) for size in request.get("blobs") or []]
    writes = {spec.get("blob"): spec for spec in request.get("writes") or []}
    stdin_blob = (request.get("exec") or {}).get("stdin_blob")
    stdin = b""
    failure = None
    for index, size in enumerate(sizes):
        if failure is not None or (index not in writes and index != stdin_blob):
            reader.stream(size, discard)
        elif index == stdin_blob:
            stdin = reader.take(size)
        else:
            try:
                receive_file(writes[index], size, reader)
            except AgentError as exc:
                failure = exc
    if failure is not None:
        raise failure
    return stdin


def streamer_for(spec: dict, request: dict, answers: int | None):
    """What sends the command's output while it runs, if the request asks for it."""
    if not spec.get("stream") or answers is None:
        return None

    def emit(parts: list) -> None:
        frame = {"id": request.get("id"), "output": [{"stream": name, "blob": i} for i, (name, _) in enumerate(parts)]}
        send_answer(answers, frame, [data for _, data in parts])

    return Streamer(emit, int(spec.get("max_output", 64 * 1024)))


def run_exec(spec: dict, request: dict, stdin: bytes, answers: int | None, blob) -> dict:
    """Run the request's command; with ``collect``, bring back what it wrote under /work/outputs."""
    before = snapshot(spec["collect"].get("path") or OUTPUTS_DIR) if spec.get("collect") else None
    result = run_command({**spec, "stdin": stdin}, streamer_for(spec, request, answers))
    for stream in ("stdout", "stderr"):
        result[stream]["blob"] = blob(result[stream].pop("data"))
    if before is not None:
        outputs, contents = collect(before, spec["collect"])
        for meta, data in zip(outputs["files"], contents, strict=True):
            meta["blob"] = blob(data)
        result["outputs"] = outputs
    return result


def process_op(spec: dict, blob) -> dict:
    """A background process's op: list, output (from an offset) or kill."""
    op = spec.get("op")
    if op == "list":
        return {"processes": PROCESSES.list()}
    if op == "output":
        meta, data = PROCESSES.output(spec)
        return {"processes": [meta], "output_blob": blob(data)}
    if op == "kill":
        return {"processes": [PROCESSES.kill(spec)]}
    raise AgentError("invalid_input", f"unknown process op {str(op)[:40]!r}: use list, output or kill.")


def handle(request: dict, stdin: bytes, answers: int | None = None) -> tuple[dict, list]:
    """Carry out one request; ``answers`` is where a streamed command's output goes meanwhile."""
    blobs: list = []

    def blob(data: bytes) -> int:
        blobs.append(data)
        return len(blobs) - 1

    answer: dict = {"ok": True}
    spec = request.get("exec")
    if spec and spec.get("background"):
        answer["process"] = {"processes": [PROCESSES.start(spec)]}
    elif spec:
        answer["exec"] = run_exec(spec, request, stdin, answers, blob)
    if request.get("process"):
        answer["process"] = process_op(request["process"], blob)
    answer["reads"] = []
    for read in request.get("reads", []):
        try:
            meta, data = read_file(read)
        except AgentError as exc:
            if "exec" not in answer:
                raise
            # After a command ran, a missing output file must not hide its result.
            answer["reads"].append({"path": read["path"], "error": str(exc)})
            continue
        meta["blob"] = blob(data)
        answer["reads"].append(meta)
    if request.get("list") is not None:
        answer["list"] = list_dir(request["list"])
    return answer, blobs


def refusal(kind: str, message: str) -> dict:
    return {"ok": False, "kind": kind, "error": message}


def serve_one(line: bytes, reader: Reader, lifetime: Lifetime, answers: int | None = None) -> tuple[dict, list]:
    """The answer to one request; never raises but for a stream that broke mid-request."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise TypeError("the request is not a JSON object")
    except (ValueError, TypeError) as exc:
        return refusal("invalid_input", f"bad request to the sandbox agent: {exc}"), []
    blobs: list = []
    try:
        stdin = receive_blobs(request, reader)
        if request.get("idle_s") is not None:
            lifetime.set_idle(float(request["idle_s"]))
        answer, blobs = handle(request, stdin, answers)
    except Closed:
        raise
    except AgentError as exc:
        answer = refusal(exc.kind, str(exc))
    except (ValueError, KeyError, TypeError) as exc:
        answer = refusal("invalid_input", f"bad request to the sandbox agent: {exc}")
    except Exception as exc:  # RecursionError, MemoryError, ...: refuse this request, serve the next
        detail = f"{type(exc).__name__}: {exc}"[:200]
        message = f"the sandbox could not carry out this request ({detail}); make it smaller or simpler."
        answer, blobs = refusal("invalid_input", message), []
    answer["id"] = request.get("id")
    return answer, blobs


def serve_connection(connection: socket.socket, lifetime: Lifetime) -> None:
    """One request from a relay (``docker exec`` of ``agent.py relay``)."""
    with connection:
        reader = Reader(connection.fileno())
        line = reader.read_line()
        if line is not None:
            answer, blobs = serve_one(line, reader, lifetime)
            send_answer(connection.fileno(), answer, blobs)


def serve() -> None:
    """The sandbox's entry process.

    Requests come on stdin (the host's attached channel, the fast path) and on
    a unix socket inside the sandbox (reached by `agent.py relay` through
    `docker exec`, for any other process). The process ends when its lifetime
    says so (``lifetime.py``); until then, once the attached stdin has closed
    after the sandbox was handed over, the socket still serves."""
    answers = os.dup(1)
    os.dup2(2, 1)  # nothing but answers may reach the real stdout
    sys.stdout = sys.stderr
    lifetime = Lifetime()
    os.chdir(WORK_DIR)
    os.makedirs(OUTPUTS_DIR, exist_ok=True)  # where code leaves files for the caller
    os.makedirs(os.path.dirname(SOCKET_PATH), mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCKET_PATH)
    listener.listen(16)
    KERNEL.ensure()  # warm: the first code runs without an interpreter start
    stdin = Reader(0)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    while True:
        asked, began = lifetime.left(), time.monotonic()
        events = selector.select(asked)
        if not events and lifetime.left() <= 0 and not lifetime.woke_late(asked, began):
            sys.exit(lifetime.exit_code())
        for key, _ in events:
            if key.fileobj is listener:
                try:
                    serve_connection(listener.accept()[0], lifetime)
                except (OSError, Closed):  # the relay went away: its answer has nowhere to go
                    pass
                lifetime.touch()
                continue
            if not stdin.fill():
                selector.unregister(0)
                if lifetime.held:  # the server that held this sandbox is gone
                    sys.exit(lifetime.exit_code())
                continue
            try:
                while (line := stdin.line()) is not None:
                    answer, blobs = serve_one(line, stdin, lifetime, answers)
                    send_answer(answers, answer, blobs)
                    lifetime.touch()
            except (Closed, ValueError):
                stdin.buffer.clear()  # the rest of a request that will never come whole


def relay() -> None:
    """One request from stdin to the resident agent's socket, its answer to stdout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(SOCKET_PATH)
        while chunk := os.read(0, CHUNK):
            connection.sendall(chunk)
        connection.shutdown(socket.SHUT_WR)
        while chunk := connection.recv(CHUNK):
            write_all(1, [chunk])


def main() -> None:
    mode = sys.argv[1:2]
    if mode == ["serve"]:
        serve()
    elif mode == ["relay"]:
        relay()
    else:
        sys.exit("usage: agent.py serve | relay")


if __name__ == "__main__":
    main()
