"""A workspace's files, read and written by the server itself (no sandbox), confined to it.

The server runs as root and a workspace's content is the tenant's to shape (a
sandbox that mounts it can plant any symlink), so every path is walked one
directory at a time from the workspace's root with ``O_NOFOLLOW``: no link is
ever followed, ``..`` is refused before anything is opened, and only regular
files are read or written (``O_NONBLOCK``: a FIFO never blocks the server).
A write goes to a temporary file renamed over the target, so a write that
fills the workspace leaves nothing half-written. What the server makes belongs
to the sandbox user, as if a sandbox had made it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput, NotFound, QuotaExceeded

MAX_PATH_CHARS = 1024
MAX_DEPTH = 64
SANDBOX_UID = 1000  # the sandbox user (sandbox/docker.py's SANDBOX_USER)
# Entries a listing looks at at most, whatever max_entries says.
MAX_SCANNED = 100_000
WALK = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    type: str  # file | dir | link | other
    size: int


def parts_of(path: str) -> tuple[str, ...]:
    """The path's parts from the workspace's root ('/a/b' and 'a/b' name the same file)."""
    if "\0" in path:
        raise InvalidInput("a path cannot hold a NUL byte: remove it.")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidInput(f"the path is {len(path)} characters, more than {MAX_PATH_CHARS}: use a shorter one.")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidInput(
            f"the path {path!r} has a '..': a workspace path stays inside the workspace, so name the file "
            "from the workspace's root (e.g. 'results/out.csv')."
        )
    if len(parts) > MAX_DEPTH:
        raise InvalidInput(f"the path is {len(parts)} directories deep, more than {MAX_DEPTH}: use a shorter one.")
    return parts


def shown(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def refused(exc: OSError, path: str) -> Exception:
    """An OS error on a workspace path as the agent should read it."""
    if exc.errno == errno.ENOENT:
        return NotFound(f"no {path!r} in this workspace: workspace_list_files shows what is there.")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return InvalidInput(
            f"{path!r} is (or goes through) a symbolic link: workspace files are read and written without "
            "following links, so name the file it points to."
        )
    if exc.errno == errno.ENOTDIR:
        return InvalidInput(f"a part of {path!r} is a file, not a directory: check the path with workspace_list_files.")
    if exc.errno == errno.EISDIR:
        return InvalidInput(f"{path!r} is a directory: name a file in it (workspace_list_files lists them).")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuotaExceeded(
            f"the workspace is full (No space left on device) writing {path!r}: its size_mib is its cap. "
            "Delete files from it (in a sandbox that mounts it) or use a larger workspace, then retry."
        )
    return InvalidInput(f"could not use {path!r} in this workspace ({os.strerror(exc.errno or 0)}): check the path.")


@contextlib.contextmanager
def directory(root: Path, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
    """An fd of the directory ``parts`` under ``root``, walked without following links;
    ``create`` makes the missing ones (owned by the sandbox user)."""
    fd = os.open(root, WALK)
    try:
        for part in parts:
            try:
                inner = os.open(part, WALK, dir_fd=fd)
            except NotADirectoryError:
                # O_DIRECTORY | O_NOFOLLOW on a link says "not a directory": say what it is.
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, "a symbolic link") from None
                raise
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chown(part, SANDBOX_UID, SANDBOX_UID, dir_fd=fd, follow_symlinks=False)
                inner = os.open(part, WALK, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def write_file(root: Path, path: str, data: bytes) -> str:
    """Write ``data`` at ``path`` (its directories made as needed); the path as written."""
    parts = parts_of(path)
    if not parts:
        raise InvalidInput("name a file to write, e.g. 'notes.txt' (the workspace's root is a directory).")
    try:
        with directory(root, parts[:-1], create=True) as fd:
            temporary = f".{parts[-1][:200]}.{secrets.token_hex(4)}.part"
            out = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd
            )
            try:
                with os.fdopen(out, "wb", closefd=False) as handle:
                    handle.write(data)
                os.fchown(out, SANDBOX_UID, SANDBOX_UID)
                os.close(out)
                out = -1
                # rename replaces a link at the target itself, never what it points to
                os.rename(temporary, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                if out >= 0:
                    os.close(out)
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=fd)
                raise
    except OSError as exc:
        raise refused(exc, shown(parts)) from exc
    return shown(parts)


def read_file(root: Path, path: str, max_bytes: int) -> tuple[bytes, int]:
    """At most ``max_bytes`` of a regular file, and its whole size."""
    parts = parts_of(path)
    if not parts:
        raise InvalidInput("name a file to read, e.g. 'notes.txt' (the workspace's root is a directory).")
    try:
        with directory(root, parts[:-1]) as fd:
            handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            try:
                info = os.fstat(handle)
                if stat.S_ISDIR(info.st_mode):
                    raise OSError(errno.EISDIR, "is a directory")
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidInput(f"{shown(parts)!r} is not a regular file: only files can be read.")
                chunks, left = [], max_bytes
                while left > 0 and (chunk := os.read(handle, min(left, 1 << 20))):
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks), info.st_size
            finally:
                os.close(handle)
    except OSError as exc:
        raise refused(exc, shown(parts)) from exc


def list_dir(root: Path, path: str, max_entries: int) -> tuple[list[Entry], bool]:
    """The entries of a directory, by name (links shown as links, never followed), and
    whether there were more than ``max_entries``."""
    parts = parts_of(path)
    entries: list[Entry] = []
    try:
        with directory(root, parts) as fd, os.scandir(fd) as found:
            for item in found:
                if len(entries) >= MAX_SCANNED:
                    break
                info = item.stat(follow_symlinks=False)
                kind = (
                    "link"
                    if stat.S_ISLNK(info.st_mode)
                    else "dir"
                    if stat.S_ISDIR(info.st_mode)
                    else "file"
                    if stat.S_ISREG(info.st_mode)
                    else "other"
                )
                entries.append(Entry(item.name, shown((*parts, item.name)), kind, info.st_size))
    except OSError as exc:
        raise refused(exc, shown(parts)) from exc
    entries.sort(key=lambda e: e.name)
    return entries[:max_entries], len(entries) > max_entries
