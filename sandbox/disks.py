"""A sandbox's disk: a capped ext4 filesystem of its own, on the host's disk, not in memory.

Why this mechanism: Docker's per-container ``storage-opt size`` needs overlay2
on xfs with project quotas, and this kind of host has overlay2 on ext4; a tmpfs
counts against memory. So each sandbox gets a sparse file of ``disk_mib``
formatted as ext4 (copied from a formatted template, a millisecond), attached
to a loop device and mounted on the host; ``/work`` and ``/tmp`` are its two
directories, bound into the container. The filesystem's size is the cap: a
writer that tries to exceed it gets ``No space left on device``. Only what is
written takes room on the host.

Nothing is left behind, whatever ends the sandbox: once the container has
started (its mount namespace holds the binds), the host's mount is detached
lazily and the file unlinked, and the loop device clears itself when its last
user lets go (``LO_FLAGS_AUTOCLEAR``). So when the container ends (destroyed,
expired, killed, or its server killed), the kernel frees the filesystem, the
loop device and the file. Only between ``prepare`` and ``release`` does the
host see anything (``<root>/<name>.<started ms>/``); a process killed in that
window leaves it, and ``sweep`` removes it.

Root on the engine's own machine is needed (loop devices, mounts); elsewhere
the driver falls back to a tmpfs and says so (``cloudskills doctor``).

The helpers below the ``LoopDisks`` line (format, mount, unmount) are the one
mechanism for every capped ext4 filesystem: a workspace is one too, kept (with a
journal) and mounted for as long as it lives rather than for a container's life.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

from common.errors import BackendUnavailable

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
SANDBOX_UID = 1000
# A directory older than this is no creation under way but a leftover (see sweep).
LEFTOVER_AFTER_S = 60.0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def loop_config(backing_fd: int, name: str) -> bytes:
    """``struct loop_config`` (linux/loop.h): the backing file, and an auto-clearing device."""
    info = struct.pack(
        "=QQQQQIIII64s64s32sQQ", 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR, name.encode()[:63], b"", b"", 0, 0
    )
    return struct.pack("=II", backing_fd, 0) + info + bytes(64)


def sparse_copy(source: Path, target: Path) -> None:
    """Copy a sparse file's data extents only (in the kernel), keeping its holes."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        os.ftruncate(dst.fileno(), size)
        position = 0
        while position < size:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            offset = start
            while offset < end:
                offset += os.copy_file_range(src.fileno(), dst.fileno(), end - offset, offset, offset)
            position = end


def format_ext4(path: Path, size_mib: int, journal: bool) -> None:
    """Make ``path`` a sparse file of ``size_mib`` holding an empty ext4 filesystem whose
    root the sandbox user owns, with no blocks kept for root (``-m 0``: the sandbox user
    may fill all of it). Inode tables are zeroed lazily and never in the background
    (mounted with noinit_itable), so an unused filesystem takes a megabyte of the host's."""
    with open(path, "wb") as handle:
        handle.truncate(size_mib << 20)
    features = [] if journal else ["-O", "^has_journal"]
    subprocess.run(
        [
            "mkfs.ext4", "-q", "-F", *features, "-m", "0",
            "-E", f"lazy_itable_init=1,root_owner={SANDBOX_UID}:{SANDBOX_UID}", str(path),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


# One attach at a time in this process: the kernel names the same free device to every
# thread that asks before one takes it. Another process may still take it first.
_attach_lock = threading.Lock()


def attach_loop(image: Path) -> tuple[str, int]:
    """A free loop device backed by ``image``, auto-clearing; (its path, an open fd to it)."""
    with _attach_lock:
        for _ in range(32):
            control = os.open("/dev/loop-control", os.O_RDWR)
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            path = f"/dev/loop{number}"
            device = os.open(path, os.O_RDWR)
            backing = os.open(image, os.O_RDWR)
            try:
                fcntl.ioctl(device, LOOP_CONFIGURE, loop_config(backing, image.name))
                return path, device
            except OSError as exc:
                os.close(device)
                if exc.errno != 16:  # EBUSY: taken meanwhile, try the next
                    raise
            finally:
                os.close(backing)
    raise OSError(16, "no free loop device")


def mount_image(image: Path, mount_point: Path) -> None:
    """Mount the ext4 filesystem in ``image`` at ``mount_point`` (nosuid, nodev) through an
    auto-clearing loop device: unmounted, the device frees itself and lets go of the file."""
    device, fd = attach_loop(image)
    try:
        _check(
            _libc.mount(device.encode(), bytes(mount_point), b"ext4", MS_NOSUID | MS_NODEV, b"noinit_itable"),
            f"mount {device}",
        )
    finally:
        os.close(fd)  # the mount holds the device now


def unmount(mount_point: Path, lazy: bool = False) -> None:
    """Unmount ``mount_point`` if it is a mount; ``lazy`` detaches it at once, and the
    filesystem lives on while anything (a container's bind) still uses it."""
    if os.path.ismount(mount_point):
        _check(_libc.umount2(bytes(mount_point), MNT_DETACH if lazy else 0), f"umount {mount_point}")


def loop_backed(image: Path) -> bool:
    """Whether a loop device is backed by the file at ``image`` now (a filesystem on it is
    still in use); one backed by a file since replaced there says "(deleted)" and is not."""
    wanted = str(image.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == wanted:
                return True
    return False


class LoopDisks:
    """Capped ext4 disks under ``root`` (one directory per sandbox while it is set up)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._templates_lock = threading.Lock()
        self._preparing: set[Path] = set()

    @staticmethod
    def usable() -> str | None:
        """Why loop disks cannot be used here, or None when they can."""
        if os.geteuid() != 0:
            return "not root (loop devices and mounts need root)"
        if not os.path.exists("/dev/loop-control"):
            return "no /dev/loop-control (the loop driver is missing)"
        if shutil.which("mkfs.ext4") is None:
            return "mkfs.ext4 is not installed (Debian's e2fsprogs)"
        return None

    def _template(self, size_mib: int) -> Path:
        """An empty ext4 filesystem of this size, formatted once and copied for each sandbox."""
        path = self.root / f".template-{size_mib}m.img"
        with self._templates_lock:
            if not path.exists():
                partial = path.with_suffix(f".{os.getpid()}.part")
                # No journal: a sandbox's disk never outlives a crash.
                format_ext4(partial, size_mib, journal=False)
                os.replace(partial, path)
        return path

    def prepare(self, name: str, size_mib: int, keep: bool = False) -> Path:
        """A fresh disk of ``size_mib`` mounted at ``<root>/<name>.<ms>``, with ``work`` and
        ``tmp`` in it; call ``release`` with it once the container that binds them has started.

        ``keep``: the disk outlives its container's run, for a sandbox that may be paused
        (checkpointed: its container stops and is started again from the checkpoint). Its
        file stays at ``<root>/kept/<name>.img`` until ``discard``, and ``remount`` mounts it
        again at the same place, where the restored container's binds expect it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if keep:
            mount_point = self.kept_dir / name
            self.kept_dir.mkdir(exist_ok=True)
        else:
            # The name carries when it was made: once mounted, the directory's own times are the disk's.
            mount_point = self.root / f"{name}.{time.time_ns() // 1_000_000}"
        image = mount_point.with_name(f"{mount_point.name}.img")
        self._preparing.add(mount_point)
        try:
            sparse_copy(self._template(size_mib), image)
            mount_point.mkdir(exist_ok=True)
            mount_image(image, mount_point)
            if not keep:
                image.unlink()  # the loop device holds the file; it is freed when the device clears
            (mount_point / "work").mkdir(mode=0o755)
            os.chown(mount_point / "work", SANDBOX_UID, SANDBOX_UID)
            (mount_point / "tmp").mkdir()
            os.chmod(mount_point / "tmp", 0o1777)
        except (OSError, subprocess.CalledProcessError) as exc:
            self.release(mount_point)
            raise BackendUnavailable(
                f"could not make the sandbox's disk ({exc}); check free space under {self.root} and try again."
            ) from exc
        return mount_point

    def release(self, mount_point: Path) -> None:
        """Let go of the host's view of a disk: detach its mount lazily (a container that
        binds it keeps it until it ends), and remove what is left (a kept disk's file stays)."""
        image = mount_point.with_name(f"{mount_point.name}.img")
        with contextlib.suppress(OSError):
            unmount(mount_point, lazy=True)
        with contextlib.suppress(OSError):
            mount_point.rmdir()
        if mount_point.parent != self.kept_dir:
            with contextlib.suppress(FileNotFoundError):
                image.unlink()
        self._preparing.discard(mount_point)

    # -- kept disks: a pausable sandbox's, which outlive their container's run -----

    @property
    def kept_dir(self) -> Path:
        return self.root / "kept"

    def kept(self, name: str) -> bool:
        return (self.kept_dir / f"{name}.img").exists()

    def remount(self, name: str) -> Path:
        """Mount a kept disk again where its container's binds expect it (before the
        container is restored); ``release`` it once the container runs."""
        mount_point = self.kept_dir / name
        mount_point.mkdir(exist_ok=True)
        if not os.path.ismount(mount_point):
            mount_image(mount_point.with_name(f"{name}.img"), mount_point)
        return mount_point

    def discard(self, name: str) -> None:
        """Delete a kept disk for good (its sandbox was destroyed); gone already is fine."""
        self.release(self.kept_dir / name)
        with contextlib.suppress(FileNotFoundError):
            (self.kept_dir / f"{name}.img").unlink()

    def made_before(self, name: str, when: float) -> bool:
        """Whether a kept disk was made before ``when`` (seconds since the epoch): one
        younger may belong to a container being created now."""
        if self.kept_dir / name in self._preparing:
            return False
        try:
            return (self.kept_dir / f"{name}.img").stat().st_ctime < when
        except FileNotFoundError:
            return False

    def kept_names(self) -> list[str]:
        """The names of the kept disks on this host."""
        if not self.kept_dir.is_dir():
            return []
        return sorted(p.name.removesuffix(".img") for p in self.kept_dir.glob("*.img"))

    def sweep(self, older_than_s: float = LEFTOVER_AFTER_S) -> list[str]:
        """Release what a killed process left half set up (any process's, on this host)."""
        if not self.root.is_dir():
            return []
        now_ms, swept = time.time_ns() // 1_000_000, []
        found = {entry.with_name(entry.name.removesuffix(".img")) for entry in self.root.iterdir()}
        for mount_point in sorted(found):
            _, _, made = mount_point.name.rpartition(".")
            if mount_point.name.startswith(".") or not made.isdigit() or mount_point in self._preparing:
                continue
            if now_ms - int(made) >= older_than_s * 1000:
                self.release(mount_point)
                swept.append(mount_point.name)
        return swept
