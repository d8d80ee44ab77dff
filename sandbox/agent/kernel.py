"""A persistent Python interpreter inside a sandbox (stdlib only, copied into the image).

The exec agent starts it once and sends it code; variables, imports and
definitions persist between calls, as in a notebook. Code arrives as
length-prefixed JSON frames on the unix socket named in its argv, each with
the stdout and stderr pipes of its run attached (SCM_RIGHTS). The kernel puts
them on fds 1 and 2 for the run; afterwards it flushes, points fds 1 and 2 back
at /dev/null and answers, so the agent knows every byte of the run's output is
already in the pipes, and nothing the run left behind can reach the next one.

As in a notebook, a pandas object that is the code's last expression is shown
as its text table, and matplotlib figures the code shows or leaves open are
saved as PNG files under /work/outputs (which come back with the result); both
only where the code imported pandas or matplotlib itself.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import struct
import sys
import traceback


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:  # type: ignore[type-arg]
    """The next frame and the pipes that came with it; (None, []) once the agent is gone."""
    header, fds, _, _ = socket.recv_fds(sock, 4, 2)
    if header and len(header) < 4:
        header += recv_exactly(sock, 4 - len(header)) or b""
    body = recv_exactly(sock, struct.unpack(">I", header)[0]) if len(header) == 4 else None
    if body is None:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        frame = json.loads(body)
    except ValueError:
        frame = None
    return (frame if isinstance(frame, dict) else {}), fds


OUTPUTS_DIR = "/work/outputs"
MAX_FIGURES = 20


def display(value: object) -> None:
    """A notebook's display of the last expression, for what this kernel shows: a pandas table."""
    if type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "to_string"):
        print(repr(value))


def run_cell(code: str, namespace: dict) -> None:  # type: ignore[type-arg]
    """Run the code; a last line that is an expression is evaluated on its own and shown."""
    tree = compile(code, "<code>", "exec", ast.PyCF_ONLY_AST)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, "<code>", "exec"), namespace)
    if last is not None:
        display(eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace))


def figure_path(directory: str) -> str:
    number = 1
    while os.path.exists(os.path.join(directory, f"figure-{number}.png")):
        number += 1
    return os.path.join(directory, f"figure-{number}.png")


def capture_figures(directory: str = OUTPUTS_DIR) -> list[str]:
    """Save every open matplotlib figure as a PNG under ``directory`` and close it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    saved = []
    try:
        numbers = list(pyplot.get_fignums())
        if numbers:
            os.makedirs(directory, exist_ok=True)
        for number in numbers[:MAX_FIGURES]:
            path = figure_path(directory)
            pyplot.figure(number).savefig(path, format="png")
            saved.append(path)
        if len(numbers) > MAX_FIGURES:
            print(f"cloudskills: {len(numbers) - MAX_FIGURES} more figures were not saved.", file=sys.stderr)
        pyplot.close("all")
    except Exception as exc:  # a broken figure must not take the run's result with it
        print(f"cloudskills: could not save a figure ({type(exc).__name__}: {exc}).", file=sys.stderr)
    if not getattr(pyplot.show, "_cloudskills", False):
        # From now on plt.show() saves the figures at once, as a notebook shows them.
        def shown(*args: object, **kwargs: object) -> None:
            capture_figures(directory)

        shown._cloudskills = True  # type: ignore[attr-defined]
        pyplot.show = shown
    return saved


def run(code: str, namespace: dict) -> int:  # type: ignore[type-arg]
    try:
        run_cell(code, namespace)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        # The traceback without this kernel's own frames, as `python3 file.py` would print it.
        kind, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(kind, value, tb)
        return 1
    return 0


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the code closed or replaced it
            pass


def execute(frame: dict, namespace: dict) -> int:  # type: ignore[type-arg]
    """Run one frame's code with its environment; never raises."""
    try:
        os.environ.update(frame.get("env") or {})
    except (TypeError, ValueError) as exc:
        print(f"cloudskills: cannot set the environment ({exc}); names are letters, digits and '_'.", file=sys.stderr)
        return 2
    try:
        return run(str(frame.get("code") or ""), namespace)
    finally:
        capture_figures()


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    # What the code starts must not hold the agent's line to us: the agent
    # could then never see this kernel die.
    os.set_inheritable(control.fileno(), False)
    sys.stdin = open(os.devnull)  # user code must not read the control socket
    os.environ.setdefault("MPLBACKEND", "Agg")  # no display: figures are drawn to files
    nowhere = os.open(os.devnull, os.O_WRONLY)
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}  # type: ignore[type-arg]
    while True:
        frame, pipes = receive(control)
        if frame is None:
            return
        if len(pipes) == 2:
            os.dup2(pipes[0], 1)
            os.dup2(pipes[1], 2)
        for fd in pipes:
            os.close(fd)
        status = execute(frame, namespace) if len(pipes) == 2 else 2
        flush()
        # Let go of the run's pipes: only what the run left running still holds them.
        os.dup2(nowhere, 1)
        os.dup2(nowhere, 2)
        answer = json.dumps({"exit_code": status}).encode()
        control.sendall(struct.pack(">I", len(answer)) + answer)


if __name__ == "__main__":
    main()
