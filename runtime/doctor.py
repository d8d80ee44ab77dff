"""`cloudskills doctor`: what this machine has, what is missing, and the one command that fixes it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import docker.errors

from common.errors import CloudSkillsError
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from sandbox.hardening import lxcfs_serves
from skills.inference.engines.llama_cpu import kernels


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def guarded(name: str, probe: Callable[[], Check], fix: str) -> Check:
    try:
        return probe()
    except CloudSkillsError as exc:
        return Check(name, False, exc.message, fix)


def runtime_checks(driver: DockerDriver, image: str) -> list[Check]:
    """Each container runtime a template may use, probed by running a sandbox on it."""
    registered = driver.client.info().get("Runtimes", {})
    checks = []
    for runtime, required in (("runc", True), ("runsc", False)):
        name = f"runtime {runtime}" + (" (gVisor)" if runtime == "runsc" else "")
        if runtime not in registered:
            checks.append(Check(name, False, "not registered with Docker", "sudo scripts/ensure-docker", required))
            continue
        try:
            driver.client.containers.run(image, ["true"], runtime=runtime, network_mode="none", remove=True)
            checks.append(Check(name, True, "runs sandboxes", required=required))
        except docker.errors.DockerException as exc:
            # A gVisor that stopped starting sandboxes on a long-lived engine comes back
            # only with a fresh engine.
            fix = "sudo scripts/ensure-docker --restart (once no sandbox runs)"
            checks.append(Check(name, False, f"registered but fails: {str(exc)[:160]}", fix, required))
    return checks


def doctor_checks(settings: Settings) -> list[Check]:
    from sandbox.images import image_exists, sandbox_image
    from sandbox.vm_image import guest_built, guest_image
    from skills.db.engines import postgres_image

    driver = DockerDriver(settings.docker_host)
    checks = [Check("data dir", True, str(settings.home))]
    engine = guarded(
        "Docker Engine",
        lambda: Check("Docker Engine", True, f"version {driver.version()}"),
        "sudo scripts/ensure-docker",
    )
    checks.append(engine)
    if engine.ok:
        tag = sandbox_image()
        built = image_exists(driver, tag)
        checks.append(
            Check("sandbox image", built, tag if built else f"{tag} is not built", "cloudskills images build")
        )
        dev = sandbox_image("dev")
        dev_built = image_exists(driver, dev)
        detail = dev if dev_built else f"{dev} is not built (the dev template, sandbox_create's default, fails)"
        checks.append(Check("dev image", dev_built, detail, "cloudskills images build"))
        if built:
            checks.extend(runtime_checks(driver, tag))
        disks = driver.disks is not None
        fix = "run the server as root on the engine's machine"
        checks.append(Check("sandbox disks", disks, driver.disk_backing(), fix, required=False))
        lxcfs = lxcfs_serves()
        shown = (
            "serves sandboxes their own /proc/meminfo" if lxcfs else "not running: runc sandboxes see the host's memory"
        )
        checks.append(Check("lxcfs", lxcfs, shown, "sudo scripts/ensure-docker", required=False))
        pg_tag = postgres_image.image_tag()
        pg_built = image_exists(driver, pg_tag)
        checks.append(
            Check(
                "PostgreSQL image",
                pg_built,
                pg_tag if pg_built else f"{pg_tag} is not built (db_create with engine postgres fails)",
                "cloudskills images build",
            )
        )
    guest = guest_built(settings.image_cache)
    checks.append(
        Check(
            "VM guest",
            guest,
            str(guest_image(settings.image_cache).disk.parent) if guest else "not built (vm_create fails)",
            "cloudskills images build",
        )
    )
    qemu = shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None
    checks.append(Check("QEMU", qemu, "found" if qemu else "missing", "sudo scripts/ensure-docker"))
    has_debootstrap = shutil.which("debootstrap") is not None
    checks.append(
        Check(
            "debootstrap",
            has_debootstrap,
            "found" if has_debootstrap else "missing",
            "sudo scripts/ensure-docker",
        )
    )
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    checks.append(
        Check(
            "KVM",
            kvm,
            "/dev/kvm is usable" if kvm else "no usable /dev/kvm (VMs would use software emulation)",
            "load the kvm module and give this user access to /dev/kvm",
            required=False,
        )
    )
    llama = importlib.util.find_spec("llama_cpp") is not None
    checks.append(
        Check(
            "local model engine",
            llama,
            f"llama-cpp-python {version('llama_cpp_python')}; CPU kernels: {kernels()}"
            if llama
            else "llama-cpp-python is not installed (the local model cannot run)",
            "scripts/setup",
            required=False,
        )
    )
    return checks
