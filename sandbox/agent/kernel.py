"""A persistent Python interpreter inside a sandbox (stdlib only, copied into the image).

The exec agent starts it once and sends it code; variables, imports and
definitions persist between calls, as in a notebook. Code arrives as
length-prefixed JSON frames on stdin; after each run the kernel flushes
stdout and stderr and answers on the file descriptor named in its argv, so
the agent knows every byte of output is already in the pipes.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import traceback


def read_exactly(stream, size):  # type: ignore[no-untyped-def]
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def run(code: str, namespace: dict) -> int:  # type: ignore[type-arg]
    try:
        exec(compile(code, "<code>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        # The traceback without this kernel's own frame, as `python3 file.py` would print it.
        kind, value, tb = sys.exc_info()
        traceback.print_exception(kind, value, tb.tb_next if tb else None)
        return 1
    return 0


def main() -> None:
    control_in = sys.stdin.buffer
    control_out = os.fdopen(int(sys.argv[1]), "wb", buffering=0)
    sys.stdin = open(os.devnull)  # user code must not read the control pipe
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}  # type: ignore[type-arg]
    while True:
        header = read_exactly(control_in, 4)
        if header is None:
            return
        frame = json.loads(read_exactly(control_in, struct.unpack(">I", header)[0]) or b"{}")
        os.environ.update(frame.get("env") or {})
        status = run(frame.get("code", ""), namespace)
        sys.stdout.flush()
        sys.stderr.flush()
        answer = json.dumps({"exit_code": status}).encode()
        control_out.write(struct.pack(">I", len(answer)) + answer)


if __name__ == "__main__":
    main()
