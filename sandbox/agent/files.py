"""Files in and out of the sandbox, for the agent (stdlib only).

A written file streams from the request to the disk chunk by chunk; a file
read is read once, up to the size asked for, and sent as a raw blob.
"""

from __future__ import annotations

import errno
import os
import stat

WORK_DIR = "/work"
FULL = (errno.ENOSPC, errno.EDQUOT)


class AgentError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def resolve(path: str) -> str:
    """An absolute path; relative paths are taken from the work dir."""
    if not path:
        raise AgentError("invalid_input", "path is empty: give a file path such as 'data.txt' or '/work/data.txt'.")
    return os.path.normpath(path if path.startswith("/") else os.path.join(WORK_DIR, path))


def disk_full(path: str) -> str:
    """What to say when the sandbox's disk has no room left."""
    try:
        info = os.statvfs(os.path.dirname(path) or WORK_DIR)
        size = str(info.f_blocks * info.f_frsize // (1 << 20))
    except OSError:
        size = "?"
    return (
        f"cannot write {path}: the sandbox's disk of {size} MiB is full; delete files you no longer need, "
        "or create a sandbox with a larger disk_mib."
    )


def write_error(path: str, exc: OSError) -> AgentError:
    if exc.errno in FULL:
        return AgentError("invalid_input", disk_full(path))
    return AgentError("invalid_input", f"cannot write {path}: {exc.strerror}; write under {WORK_DIR} or /tmp.")


def receive_file(spec: dict, size: int, reader) -> dict:
    """Stream one write's blob of ``size`` bytes from ``reader`` into its file. The blob
    is always consumed whole, so the next one is read from the right place even after an error."""
    path = resolve(spec["path"])
    failure: list = []
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = open(path, "wb", buffering=0)
    except Exception as exc:  # OSError, or a path too deep to make (RecursionError)
        reader.stream(size, lambda chunk: None)
        if isinstance(exc, OSError):
            raise write_error(path, exc)
        raise

    def sink(chunk) -> None:
        if failure:
            return
        try:
            handle.write(chunk)
        except OSError as exc:
            failure.append(exc)

    try:
        reader.stream(size, sink)
    finally:
        handle.close()
    if failure:
        # A half-written file would pass for the whole one: remove it (and free its space).
        try:
            os.unlink(path)
        except OSError:
            pass
        raise write_error(path, failure[0])
    if spec.get("mode") is not None:
        os.chmod(path, int(spec["mode"]))
    return {"path": path, "size": size}


def read_file(spec: dict) -> tuple[dict, bytes]:
    """A file's first ``max_bytes`` bytes, and what the answer says of it."""
    path = resolve(spec["path"])
    max_bytes = int(spec.get("max_bytes", 1 << 20))
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            data = bytearray()
            while len(data) <= max_bytes:
                chunk = handle.read(max_bytes + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise AgentError("not_found", f"no file {path} in the sandbox: list the directory to see what is there.")
    except IsADirectoryError:
        raise AgentError("invalid_input", f"{path} is a directory: list it, or read a file inside it.")
    except OSError as exc:
        raise AgentError("invalid_input", f"cannot read {path}: {exc.strerror}.")
    truncated = len(data) > max_bytes
    del data[max_bytes:]
    return {"path": path, "size": max(size, len(data)), "truncated": truncated}, bytes(data)


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


OUTPUTS_DIR = f"{WORK_DIR}/outputs"
# Files looked at under the outputs directory, at most: a tree of thousands is not a result.
MAX_SCAN = 1000


def snapshot(root: str = OUTPUTS_DIR) -> dict:
    """Every regular file under ``root`` (not following links): path -> (size, mtime_ns)."""
    seen: dict = {}
    stack = [root]
    while stack and len(seen) < MAX_SCAN:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    seen[entry.path] = (info.st_size, info.st_mtime_ns)
            except OSError:
                continue
    return seen


def collect(before: dict, spec: dict) -> tuple[dict, list]:
    """The files under the outputs directory that are new or changed since ``before``,
    within the caps of ``spec`` (max_files, max_file_bytes, max_total_bytes), and a
    line for each one left out saying why: (answer, contents)."""
    max_files = int(spec.get("max_files", 20))
    max_file = int(spec.get("max_file_bytes", 4 << 20))
    room = int(spec.get("max_total_bytes", 8 << 20))
    files, left_out, contents = [], [], []
    for path, (size, mtime) in sorted(snapshot(spec.get("path") or OUTPUTS_DIR).items()):
        if before.get(path) == (size, mtime):
            continue
        if size > max_file:
            left_out.append({"path": path, "size": size, "reason": f"larger than the {max_file} bytes a file may be"})
        elif len(files) >= max_files:
            left_out.append({"path": path, "size": size, "reason": f"past the first {max_files} files"})
        elif size > room:
            left_out.append({"path": path, "size": size, "reason": "past the total size the outputs may have"})
        else:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as handle:
                    data = handle.read(max_file + 1)
            except OSError as exc:
                left_out.append({"path": path, "size": size, "reason": f"unreadable ({exc.strerror})"})
                continue
            if len(data) > min(max_file, room):  # it grew while being read
                left_out.append({"path": path, "size": len(data), "reason": "it was still growing"})
                continue
            room -= len(data)
            files.append({"path": path, "size": len(data)})
            contents.append(data)
    return {"files": files, "left_out": left_out}, contents
