"""Where a workspace's bytes live on the host: an ext4 image of its ``size_mib``, mounted.

    <root>/images/<id>.img        a sparse file: only what is written takes room
    <root>/mnt/<id>/              its filesystem, mounted (nosuid, nodev) via a loop
                                  device for as long as the workspace lives
    <root>/snapshots/<id>.img     a frozen copy (sparse too)

Why this mechanism: the filesystem's size is the cap, so a writer in any
sandbox that passes it gets "No space left on device" from the kernel, with no
poller after the fact; several sandboxes bind the one mount at once and see
each other's writes. It is the mechanism of sandbox disks (``sandbox.disks``),
with a journal since a workspace outlives crashes. A mount outlives the server
process (a sandbox may still bind it), and a server that starts finds it there
or mounts it again; an image is never mounted twice at once (two kernels'
views of one ext4 would corrupt it): while a loop device still holds it, it is
reported busy instead.

Snapshots are taken with the filesystem frozen (``FIFREEZE``: writers wait, the
journal is flushed), so the copy is consistent; freezing needs no sandbox's
help and works while sandboxes write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from common.errors import BackendUnavailable
from sandbox.disks import LoopDisks, format_ext4, loop_backed, mount_image, sparse_copy, unmount

# ioctl(2) numbers of linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


class HostDisks:
    """The workspaces' images, mounts and snapshots under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image(self, workspace_id: str) -> Path:
        return self.root / "images" / f"{workspace_id}.img"

    def mount_point(self, workspace_id: str) -> Path:
        return self.root / "mnt" / workspace_id

    def snapshot(self, snapshot_id: str) -> Path:
        return self.root / "snapshots" / f"{snapshot_id}.img"

    @staticmethod
    def usable() -> str | None:
        return LoopDisks.usable()

    def make(self, workspace_id: str, size_mib: int) -> None:
        """A new, empty filesystem of ``size_mib``, mounted; its root the sandbox user's."""
        image = self.image(workspace_id)
        image.parent.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".part")
        try:
            format_ext4(partial, size_mib, journal=True)
            os.replace(partial, image)
            self.mount(workspace_id)
            # An agent's workspace shows its own files only: fsck makes lost+found again if it needs one.
            with contextlib.suppress(OSError):
                (self.mount_point(workspace_id) / "lost+found").rmdir()
        except (OSError, subprocess.CalledProcessError) as exc:
            self.remove(workspace_id)
            partial.unlink(missing_ok=True)
            raise BackendUnavailable(
                f"could not make the workspace's filesystem ({exc}); check free space under {self.root} and retry."
            ) from exc

    def mounted(self, workspace_id: str) -> bool:
        return os.path.ismount(self.mount_point(workspace_id))

    def mount(self, workspace_id: str) -> Path:
        """The workspace's mount point, mounted now if it was not (after a host's reboot)."""
        mount_point, image = self.mount_point(workspace_id), self.image(workspace_id)
        if os.path.ismount(mount_point):
            return mount_point
        if not image.exists():
            raise BackendUnavailable(
                f"the data of workspace {workspace_id!r} is not on this server's host ({image} is missing): "
                "call the server that made it, or delete the workspace."
            )
        if loop_backed(image):
            raise BackendUnavailable(
                f"workspace {workspace_id!r} is still held by a sandbox from before its last unmount: destroy the "
                "sandboxes that mount it (sandbox_list), then retry."
            )
        mount_point.mkdir(parents=True, exist_ok=True)
        try:
            mount_image(image, mount_point)
        except OSError as exc:
            raise BackendUnavailable(f"could not mount workspace {workspace_id!r} ({exc}): retry.") from exc
        return mount_point

    def unmount(self, workspace_id: str) -> None:
        """Unmount now: the caller has made sure no sandbox binds it. Something the server
        itself has open there (a file being read) makes it a lazy detach instead."""
        mount_point = self.mount_point(workspace_id)
        try:
            unmount(mount_point)
        except OSError:
            unmount(mount_point, lazy=True)

    def remove(self, workspace_id: str) -> None:
        """Unmount and delete the image: its bytes are gone once no sandbox binds them."""
        mount_point = self.mount_point(workspace_id)
        with contextlib.suppress(OSError):
            unmount(mount_point, lazy=True)
        with contextlib.suppress(OSError):
            mount_point.rmdir()
        self.image(workspace_id).unlink(missing_ok=True)

    @contextlib.contextmanager
    def frozen(self, workspace_id: str) -> Iterator[None]:
        """The filesystem frozen while inside: its image is consistent, writers wait."""
        fd = os.open(self.mount(workspace_id), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
            try:
                yield
            finally:
                fcntl.ioctl(fd, FITHAW, 0)
        finally:
            os.close(fd)

    def take_snapshot(self, workspace_id: str, snapshot_id: str) -> int:
        """Copy the image, frozen, keeping its holes; the bytes the copy takes on the host."""
        target = self.snapshot(snapshot_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.frozen(workspace_id):
                sparse_copy(self.image(workspace_id), target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise BackendUnavailable(f"could not copy the workspace ({exc}); check free space and retry.") from exc
        return target.stat().st_blocks * 512

    def restore(self, workspace_id: str, snapshot_id: str) -> None:
        """Make the workspace's content the snapshot's: unmounted, its image replaced, mounted again."""
        image = self.image(workspace_id)
        partial = image.with_suffix(".restoring")
        try:
            sparse_copy(self.snapshot(snapshot_id), partial)
            self.unmount(workspace_id)
            os.replace(partial, image)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BackendUnavailable(f"could not restore the workspace ({exc}); check free space and retry.") from exc
        finally:
            self.mount(workspace_id)

    def drop_snapshot(self, snapshot_id: str) -> None:
        self.snapshot(snapshot_id).unlink(missing_ok=True)

    def usage(self, workspace_id: str) -> tuple[int, int]:
        """(bytes used, bytes a writer may use in all) of the mounted filesystem."""
        found = os.statvfs(self.mount(workspace_id))
        return (found.f_blocks - found.f_bfree) * found.f_frsize, found.f_blocks * found.f_frsize
