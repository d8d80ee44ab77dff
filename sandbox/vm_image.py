"""The VM guest, built here from Debian's packages and cached by content.

``debootstrap`` makes a root filesystem with Debian's cloud kernel
(``linux-image-cloud-amd64``) and ``qemu-guest-agent``. The kernel is copied
out, with an initramfs of our own (static busybox and the four drivers a QEMU
guest needs); the root
filesystem becomes an ext4 disk (``mkfs.ext4 -d``, no loop mounts) converted
to qcow2, the read-only base every VM's copy-on-write overlay sits on. The
guest's PID 1 is a small script that mounts what Linux needs, grows the root
filesystem to the VM's disk, and serves the guest agent: no systemd, so a
guest under software emulation answers in seconds.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import BackendUnavailable
from sandbox.images import DEBIAN_SUITE, PRUNE, Progress, check_can_debootstrap, content_hash, debootstrap

VM_RECIPE_VERSION = "1"
INIT_PATH = "/usr/local/sbin/cloudskills-init"
AGENT_PORT = "org.qemu.guest_agent.0"
GUEST_PACKAGES = ("linux-image-cloud-amd64", "qemu-guest-agent", "e2fsprogs", "busybox-static", "procps")
# What the initramfs loads: the disk, the agent's port, the root filesystem.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "ext4")

# Our own initramfs: load the few modules a QEMU guest needs, mount the disk,
# hand over. Debian's own (udev probing every device) takes seconds more to boot.
INITRAMFS_INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /dev /newroot
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
for module in $(/bin/busybox cat /modules/order); do /bin/busybox insmod "/modules/$module"; done
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 1000 ]; do /bin/busybox usleep 10000; tries=$((tries + 1)); done
/bin/busybox mount -t ext4 -o rw /dev/vda /newroot || exec /bin/busybox sh
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc
exec /bin/busybox switch_root /newroot {INIT_PATH}
"""
BASE_DISK_MIB = 1024

INIT_SCRIPT = f"""#!/bin/sh
# PID 1 of a cloudskills VM: mount what Linux needs, grow the root filesystem
# to the disk, then serve the QEMU guest agent (restarted should it exit).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname cloudskills-vm
busybox ip link set lo up
resize2fs /dev/vda >/dev/null 2>&1
for port in /sys/class/virtio-ports/*; do
  [ "$(cat "$port/name")" = "{AGENT_PORT}" ] && device="/dev/$(basename "$port")"
done
(while true; do qemu-ga --method=virtio-serial --path="$device" --statedir=/run; sleep 0.2; done) &
# PID 1 must never exit; it also reaps orphaned processes.
while true; do wait; sleep 1; done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    disk: Path  # qcow2, read-only: the base of every VM's overlay


def guest_hash() -> str:
    parts = (GUEST_PACKAGES, INITRAMFS_MODULES, INITRAMFS_INIT, INIT_SCRIPT, BASE_DISK_MIB)
    return content_hash(VM_RECIPE_VERSION, DEBIAN_SUITE, *parts)


def guest_image(cache: Path) -> GuestImage:
    folder = cache / "vm" / guest_hash()
    return GuestImage(kernel=folder / "vmlinuz", initrd=folder / "initrd.img", disk=folder / "base.qcow2")


def guest_built(cache: Path) -> bool:
    image = guest_image(cache)
    return all(p.exists() for p in (image.kernel, image.initrd, image.disk))


def ensure_guest_image(cache: Path, progress: Progress) -> GuestImage:
    image = guest_image(cache)
    if not guest_built(cache):
        build_guest(image, progress)
    return image


def build_guest(image: GuestImage, progress: Progress) -> None:
    for tool in ("mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            raise BackendUnavailable(f"{tool} is not installed: run `scripts/ensure-docker` as root, then try again.")
    check_can_debootstrap("the VM guest")
    folder = image.disk.parent
    progress(f"building the VM guest {folder.name} from Debian {DEBIAN_SUITE} ({', '.join(GUEST_PACKAGES)})...")
    with tempfile.TemporaryDirectory(prefix="cloudskills-guest-") as work:
        root = Path(work) / "root"
        debootstrap(root, GUEST_PACKAGES, progress)
        configure_guest(root)
        progress("making the initramfs...")
        staging = Path(work) / "out"
        staging.mkdir()
        kernel = newest(root / "boot", "vmlinuz-*")
        shutil.copy(kernel, staging / "vmlinuz")
        write_initramfs(root, kernel.name.removeprefix("vmlinuz-"), staging / "initrd.img")
        for relative in (*PRUNE, "boot"):
            shutil.rmtree(root / relative, ignore_errors=True)
        progress("making the base disk...")
        raw = Path(work) / "disk.raw"
        subprocess.run(
            ["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw), f"{BASE_DISK_MIB}M"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(staging / "base.qcow2")],
            check=True,
            capture_output=True,
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(staging, folder)  # whole or not at all: a half-built guest is never used
    progress(f"built the VM guest {folder.name}")


def write_initramfs(root: Path, kernel_version: str, dest: Path) -> None:
    """A cpio archive of static busybox, the modules (dependencies first) and our init."""
    files: dict[str, tuple[bytes, int]] = {
        "init": (INITRAMFS_INIT.encode(), 0o755),
        "bin/busybox": ((root / "bin/busybox").read_bytes(), 0o755),
    }
    order: list[str] = []
    for module in INITRAMFS_MODULES:
        shown = subprocess.run(
            ["chroot", str(root), "modprobe", "--show-depends", "-S", kernel_version, module],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in shown.splitlines():
            if not line.startswith("insmod "):
                continue  # "builtin <name>": compiled into the kernel
            path = Path(line.split()[1])
            name = path.name.removesuffix(".xz")
            if name in order:
                continue
            data = (root / str(path).lstrip("/")).read_bytes()
            if path.suffix == ".xz":
                data = lzma.decompress(data)
            files[f"modules/{name}"] = (data, 0o644)
            order.append(name)
    files["modules/order"] = ("\n".join(order).encode() + b"\n", 0o644)
    dest.write_bytes(newc_archive(files))


def newc_archive(files: dict[str, tuple[bytes, int]]) -> bytes:
    """The kernel's initramfs format: a "newc" cpio archive, directories first."""
    folders = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})
    entries = [(folder, b"", 0o040755) for folder in folders]
    entries += [(name, data, 0o100000 | mode) for name, (data, mode) in files.items()]
    out = bytearray()
    for inode, (name, data, mode) in enumerate([*entries, ("TRAILER!!!", b"", 0)], start=1):
        encoded = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + "".join(f"{field:08x}" for field in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)


def configure_guest(root: Path) -> None:
    init = root / INIT_PATH.lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    (root / "etc/hostname").write_text("cloudskills-vm\n")
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")


def newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise BackendUnavailable(f"the guest has no {pattern} in /boot: the kernel package did not install.")
    return found[-1]
