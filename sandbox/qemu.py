"""VMs as QEMU processes: one process per VM, each on its own copy-on-write overlay.

A VM lives in a folder of its own: its overlay disk (qcow2 on the read-only
guest base), the guest agent's and QMP's sockets, its console log and QEMU's
pid file. QEMU runs daemonized, so a VM outlives the server that started it;
any process finds it again from its folder. Every QEMU process carries
``-name cloudskills.<store>.<vm id>``, so a reaper can always tell ours, and
whose, from the process table.

KVM is used when it really works, which is probed by booting the guest once
(opening /dev/kvm is not enough: on some hosts a KVM guest hangs early);
software emulation (TCG) otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import BackendUnavailable, InvalidInput, NotFound
from sandbox.qga import ProtocolError, agent_answers, agent_call, qmp_call
from sandbox.vm_image import AGENT_PORT, INIT_PATH, GuestImage

BOOT_TIMEOUT_S = 60.0
KVM_PROBE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
FILE_CHUNK = 48 * 1024
DISK_ID = "disk0"


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    memory_mib: int
    disk_mib: int


FLAVORS = {
    "small": Flavor("small", vcpus=1, memory_mib=512, disk_mib=2048),
    "medium": Flavor("medium", vcpus=2, memory_mib=1024, disk_mib=4096),
    "large": Flavor("large", vcpus=2, memory_mib=2048, disk_mib=8192),
}


@dataclass(frozen=True)
class GuestExec:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_ms: int


def marker(store_id: str, vm_id: str) -> str:
    return f"cloudskills.{store_id}.{vm_id}"


class QemuDriver:
    def __init__(self, image: GuestImage, store_id: str, state_dir: Path) -> None:
        self.image = image
        self.store_id = store_id
        self.state_dir = state_dir
        self._accel: str | None = None
        self._accel_lock = threading.Lock()
        # The guest agent serves one client at a time: one call per VM at once.
        self._locks: dict[str, threading.Lock] = {}

    def folder(self, vm_id: str) -> Path:
        return self.state_dir / vm_id

    def _lock(self, vm_id: str) -> threading.Lock:
        return self._locks.setdefault(vm_id, threading.Lock())

    # -- acceleration ------------------------------------------------------

    def accel(self) -> str:
        """'kvm' where a KVM guest really boots here, else 'tcg'; probed once and remembered."""
        with self._accel_lock:
            if self._accel is None:
                self._accel = self._probe_accel()
            return self._accel

    def _probe_accel(self) -> str:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg"
        remembered = self.image.disk.parent / f"accel-{boot_id()}"
        if remembered.exists():
            return remembered.read_text().strip()
        with tempfile.TemporaryDirectory(prefix="cloudskills-kvm-probe-") as work:
            folder = Path(work)
            accel = "tcg"
            try:
                self._launch(folder, "kvm-probe", FLAVORS["small"], "kvm")
                if agent_answers(folder / "qga.sock", KVM_PROBE_TIMEOUT_S):
                    accel = "kvm"
            except BackendUnavailable:
                pass
            finally:
                self._kill(folder)
        remembered.write_text(accel)
        return accel

    # -- lifecycle ---------------------------------------------------------

    def create(self, vm_id: str, flavor: Flavor) -> None:
        folder = self.folder(vm_id)
        folder.mkdir(parents=True, exist_ok=True)
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(self.image.disk),
                "-F",
                "qcow2",
                str(folder / "disk.qcow2"),
                f"{flavor.disk_mib}M",
            ]
        )

    def start(self, vm_id: str, flavor: Flavor) -> str:
        """Boot the VM; return once its guest agent answers, with the acceleration used."""
        accel = self.accel()
        folder = self.folder(vm_id)
        self._launch(folder, marker(self.store_id, vm_id), flavor, accel)
        if not agent_answers(folder / "qga.sock", BOOT_TIMEOUT_S):
            tail = console_tail(folder)
            self._kill(folder)
            raise BackendUnavailable(
                f"the VM did not answer within {BOOT_TIMEOUT_S:g} s of booting; its console ends: {tail!r}. "
                "Delete it with vm_delete and try again."
            )
        return accel

    def _launch(self, folder: Path, name: str, flavor: Flavor, accel: str) -> None:
        for stale in ("qga.sock", "qmp.sock", "qemu.pid"):
            (folder / stale).unlink(missing_ok=True)
        disk = folder / "disk.qcow2"
        if not disk.exists():  # the KVM probe boots a throwaway overlay
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.disk), "-F", "qcow2", str(disk)])
        cpu = "max" if accel == "tcg" else "host"
        command = [
            "qemu-system-x86_64",
            "-name",
            name,
            "-machine",
            f"pc,accel={accel}",
            "-cpu",
            cpu,
            "-smp",
            str(flavor.vcpus),
            "-m",
            str(flavor.memory_mib),
            "-nodefaults",
            "-display",
            "none",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"root=/dev/vda rw console=ttyS0 quiet init={INIT_PATH}",
            "-drive",
            f"file={disk},if=virtio,format=qcow2,id={DISK_ID}",
            "-device",
            "virtio-serial",
            "-chardev",
            f"socket,path={folder / 'qga.sock'},server=on,wait=off,id=qga0",
            "-device",
            f"virtserialport,chardev=qga0,name={AGENT_PORT}",
            "-qmp",
            f"unix:{folder / 'qmp.sock'},server=on,wait=off",
            "-serial",
            f"file:{folder / 'console.log'}",
            "-nic",
            "none",  # no guest network by default
            "-daemonize",
            "-pidfile",
            str(folder / "qemu.pid"),
        ]
        run(command)

    def running(self, vm_id: str) -> bool:
        return pid_of(self.folder(vm_id), marker(self.store_id, vm_id)) is not None

    def stop(self, vm_id: str) -> None:
        """Flush and stop the guest, then end its QEMU process."""
        folder = self.folder(vm_id)
        if pid_of(folder, marker(self.store_id, vm_id)) is None:
            return
        with self._lock(vm_id), contextlib.suppress(BackendUnavailable, OSError, ValueError):
            # The root filesystem read-only: everything written is on the disk.
            self._guest_exec(folder, "sync; mount -o remount,ro / 2>/dev/null; sync", 10.0)
        self._kill(folder, marker(self.store_id, vm_id))

    def _kill(self, folder: Path, name: str | None = None) -> None:
        pid = pid_of(folder, name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # QEMU closes its disks cleanly on SIGTERM
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.02)

    def delete(self, vm_id: str) -> None:
        self._kill(self.folder(vm_id), marker(self.store_id, vm_id))
        shutil.rmtree(self.folder(vm_id), ignore_errors=True)
        self._locks.pop(vm_id, None)

    # -- snapshots ---------------------------------------------------------

    def snapshot(self, vm_id: str, name: str) -> None:
        folder = self.folder(vm_id)
        if self.running(vm_id):
            with self._lock(vm_id):
                self._guest_exec(folder, "sync", 30.0)
                qmp_call(folder / "qmp.sock", "blockdev-snapshot-internal-sync", {"device": DISK_ID, "name": name})
        else:
            run(["qemu-img", "snapshot", "-c", name, str(folder / "disk.qcow2")])

    def restore(self, vm_id: str, name: str) -> None:
        """Put the disk back as it was at the snapshot; the VM must be stopped."""
        run(["qemu-img", "snapshot", "-a", name, str(self.folder(vm_id) / "disk.qcow2")])

    def drop_snapshot(self, vm_id: str, name: str) -> None:
        run(["qemu-img", "snapshot", "-d", name, str(self.folder(vm_id) / "disk.qcow2")])

    # -- the guest agent ---------------------------------------------------

    def exec(self, vm_id: str, command: str, timeout_s: float, max_output: int) -> GuestExec:
        with self._lock(vm_id):
            return self._guest_exec(self.folder(vm_id), command, timeout_s, max_output)

    def _guest_exec(self, folder: Path, command: str, timeout_s: float, max_output: int = 1 << 20) -> GuestExec:
        started = time.monotonic()
        socket_path = folder / "qga.sock"
        # The guest kills the command at its timeout: the agent itself cannot.
        argv = ["timeout", "-s", "KILL", f"{timeout_s:g}", "/bin/sh", "-c", command]
        launched = agent_call(
            socket_path, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True}, timeout_s=10.0
        )
        deadline = started + timeout_s + 10.0
        while True:
            status = agent_call(socket_path, "guest-exec-status", {"pid": launched["pid"]}, timeout_s=10.0)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise BackendUnavailable("the VM stopped answering about a command: vm_reboot it and retry.")
            time.sleep(0.02)
        duration_ms = int((time.monotonic() - started) * 1000)
        code = int(status.get("exitcode", -int(status.get("signal", 0))))
        # `timeout -s KILL` kills its whole process group, itself included.
        timed_out = code in (137, -9) and duration_ms >= timeout_s * 1000
        return GuestExec(
            exit_code=code,
            stdout=base64.b64decode(status.get("out-data", ""))[:max_output],
            stderr=base64.b64decode(status.get("err-data", ""))[:max_output],
            timed_out=timed_out,
            duration_ms=duration_ms,
        )

    def write_file(self, vm_id: str, path: str, data: bytes) -> None:
        socket_path = self.folder(vm_id) / "qga.sock"
        with self._lock(vm_id):
            handle = self._open(socket_path, path, "w")
            try:
                for start in range(0, len(data), FILE_CHUNK):
                    chunk = base64.b64encode(data[start : start + FILE_CHUNK]).decode()
                    agent_call(socket_path, "guest-file-write", {"handle": handle, "buf-b64": chunk})
            finally:
                agent_call(socket_path, "guest-file-close", {"handle": handle})

    def read_file(self, vm_id: str, path: str, max_bytes: int) -> tuple[bytes, bool]:
        """The file's first ``max_bytes`` and whether there was more."""
        socket_path = self.folder(vm_id) / "qga.sock"
        with self._lock(vm_id):
            handle = self._open(socket_path, path, "r")
            data = b""
            try:
                while len(data) <= max_bytes:
                    read = agent_call(socket_path, "guest-file-read", {"handle": handle, "count": FILE_CHUNK})
                    data += base64.b64decode(read.get("buf-b64", ""))
                    if read.get("eof"):
                        break
            finally:
                agent_call(socket_path, "guest-file-close", {"handle": handle})
        return data[:max_bytes], len(data) > max_bytes

    def _open(self, socket_path: Path, path: str, mode: str) -> int:
        try:
            return int(agent_call(socket_path, "guest-file-open", {"path": path, "mode": mode}))
        except ProtocolError as exc:
            if "No such file" in exc.message:
                raise NotFound(
                    f"no file {path!r} in the VM: check the path (vm_exec `ls` shows what is there)."
                ) from exc
            if "Is a directory" in exc.message or "Permission denied" in exc.message:
                raise InvalidInput(f"cannot open {path!r} in the VM: {exc.message}") from exc
            raise

    # -- the reaper's view ---------------------------------------------------

    def processes(self) -> dict[str, int]:
        """This store's QEMU processes: vm id -> pid."""
        prefix = f"cloudskills.{self.store_id}."
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-name" in argv:
                name = argv[argv.index(b"-name") + 1].decode(errors="replace")
                if name.startswith(prefix):
                    found[name[len(prefix) :]] = int(entry.name)
        return found

    def kill_process(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise BackendUnavailable(
            f"{command[0]} is not installed: run `scripts/ensure-docker` as root, then try again."
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise BackendUnavailable(f"{command[0]} failed: {exc.stderr.strip()[-300:]}") from exc


def pid_of(folder: Path, name: str | None) -> int | None:
    """The live QEMU process of a VM folder, checked against its name (pids are reused)."""
    try:
        pid = int((folder / "qemu.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"-name" not in argv or (name is not None and argv[argv.index(b"-name") + 1].decode() != name):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def console_tail(folder: Path) -> str:
    try:
        return (folder / "console.log").read_text(errors="replace")[-300:]
    except OSError:
        return ""
