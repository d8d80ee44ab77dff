"""Background processes inside the sandbox, for the agent (stdlib only).

A background command starts and the request answers at once with its id. The
command's stdout and stderr share one pipe (in order, as a terminal shows
them), which a thread of the agent drains into a bounded ring in the agent's
memory: the newest ``RING_BYTES`` are kept, addressed by their offset in the
whole stream, so a reader asks "from offset N" and learns what it missed. Its
output never reaches any other call's answer, and the process ends with the
sandbox (the container's removal kills every process in it).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

from commands import child_env, kill_group, start
from files import WORK_DIR, AgentError

RING_BYTES = 1 << 20
# Processes kept in the table; the oldest that has exited makes room for a new one.
MAX_PROCESSES = 32
MAX_READ = 1 << 20


class Ring:
    """The newest ``limit`` bytes of a stream, and the offset of the first one kept."""

    def __init__(self, limit: int = RING_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.start = 0  # the stream's offset of data[0]

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        over = len(self.data) - self.limit
        if over > 0:
            del self.data[:over]
            self.start += over

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """The kept bytes from ``offset`` on (or from the oldest kept, if that is later)."""
        begin = min(max(offset, self.start), self.end)
        return begin, bytes(self.data[begin - self.start : begin - self.start + max_bytes])


class Background:
    def __init__(self, process_id: str, command: str, proc: subprocess.Popen, pipe: int) -> None:
        self.process_id = process_id
        self.command = command
        self.proc = proc
        self.started_at = time.time()
        self.ring = Ring()
        self.lock = threading.Lock()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self.pump, args=(pipe,), daemon=True)
        self.thread.start()

    def pump(self, pipe: int) -> None:
        try:
            while chunk := os.read(pipe, 65536):
                with self.lock:
                    self.ring.append(chunk)
        except OSError:
            pass
        finally:
            os.close(pipe)
        code = self.proc.wait()
        self.exit_code = 128 - code if code < 0 else code

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def info(self) -> dict:
        code = self.proc.poll()
        with self.lock:
            size = self.ring.end
        return {
            "process_id": self.process_id,
            "command": self.command,
            "pid": self.proc.pid,
            "running": code is None,
            "exit_code": None if code is None else (128 - code if code < 0 else code),
            "started_at": self.started_at,
            "output_bytes": size,
        }


class Processes:
    def __init__(self) -> None:
        self.table: dict[str, Background] = {}
        self.counter = 0

    def start(self, spec: dict) -> dict:
        argv = [str(part) for part in spec.get("argv") or []]
        if not argv:
            raise AgentError("invalid_input", "a background process needs a command.")
        self.make_room()
        read_end, write_end = os.pipe()
        try:
            proc = start(argv, spec.get("cwd") or WORK_DIR, child_env(spec), subprocess.DEVNULL, output=write_end)
        except AgentError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.counter += 1
        process_id = f"proc_{self.counter}"
        shown = (argv[2] if len(argv) == 3 and argv[:2] == ["bash", "-c"] else " ".join(argv))[:1000]
        self.table[process_id] = Background(process_id, shown, proc, read_end)
        return self.table[process_id].info()

    def make_room(self) -> None:
        if len(self.table) < MAX_PROCESSES:
            return
        ended = [p for p in self.table.values() if not p.running]
        if not ended:
            raise AgentError(
                "invalid_input",
                f"{MAX_PROCESSES} background processes are running in this sandbox, the most it may have: "
                "stop one with sandbox_process_kill first.",
            )
        del self.table[min(ended, key=lambda p: p.started_at).process_id]

    def get(self, process_id: str) -> Background:
        found = self.table.get(str(process_id))
        if found is None:
            raise AgentError(
                "not_found",
                f"no background process {str(process_id)[:60]!r} in this sandbox: sandbox_process_list shows them.",
            )
        return found

    def list(self) -> list[dict]:
        return [p.info() for p in self.table.values()]

    def output(self, spec: dict) -> tuple[dict, bytes]:
        process = self.get(spec.get("process_id"))
        offset = max(int(spec.get("offset") or 0), 0)
        max_bytes = min(max(int(spec.get("max_bytes") or 65536), 1), MAX_READ)
        if not process.running:
            process.thread.join(1.0)  # what it wrote before it ended is all in
        with process.lock:
            begin, data = process.ring.read(offset, max_bytes)
            end = process.ring.end
        meta = {
            **process.info(),
            "offset": begin,
            "next_offset": begin + len(data),
            "dropped_bytes": max(begin - offset, 0) if offset <= end else 0,
            "more": begin + len(data) < end,
        }
        return meta, data

    def kill(self, spec: dict) -> dict:
        process = self.get(spec.get("process_id"))
        if process.running:
            kill_group(process.proc.pid)
            process.proc.wait()
        process.thread.join(1.0)
        return process.info()


PROCESSES = Processes()
