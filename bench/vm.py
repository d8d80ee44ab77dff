"""VMs: create-to-first-command through cloudskills, against the same guest booted by hand.

    .venv/bin/python -m bench.vm [--repeat 5]

Through cloudskills: `vm_create {}` then `vm_exec uname -a`, each a task (admission,
the record, the overlay disk, QEMU booted until the guest agent answers, billing).
Baseline, in the same run: the same guest booted with the same QEMU command line by
the driver alone (no store, no scheduler, no billing), then the same command.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio

from bench.common import summary
from runtime.app import App
from runtime.settings import Settings
from sandbox.qemu import FLAVORS, QemuDriver
from skills.vm.instances import VmManager


async def through_cloudskills(app: App, repeat: int) -> tuple[list[float], str]:
    samples, accel = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        created = (await app.call(app.settings.tenant, "vm_create", {})).model_dump()
        command = {"vm_id": created["vm_id"], "command": "uname -a"}
        ran = (await app.call(app.settings.tenant, "vm_exec", command)).model_dump()
        samples.append((time.perf_counter() - start) * 1000)
        assert ran["exit_code"] == 0
        accel = created["accel"]
        await app.call(app.settings.tenant, "vm_delete", {"vm_id": created["vm_id"]})
    return samples, accel


def by_hand(driver: QemuDriver, repeat: int) -> list[float]:
    samples = []
    for i in range(repeat):
        start = time.perf_counter()
        driver.create(f"bench{i}", FLAVORS["small"])
        driver.start(f"bench{i}", FLAVORS["small"])
        driver.exec(f"bench{i}", "uname -a", 30, 65536)
        samples.append((time.perf_counter() - start) * 1000)
        driver.delete(f"bench{i}")
    return samples


async def bench(repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cloudskills-bench-") as home:
        app = App(Settings(home=Path(home), pool_size=0))
        async with app.running():
            ours, accel = await through_cloudskills(app, repeat)
            # A store id of its own: the app's reaper would take its VMs for strays.
            alone = QemuDriver(app.service(VmManager).driver.image, "bench-baseline", Path(home) / "baseline")
            baseline = await anyio.to_thread.run_sync(by_hand, alone, repeat)
        app.close()
    print(f"acceleration: {accel}")
    print(summary("vm_create + vm_exec (cloudskills)", ours))
    print(summary("  baseline: the driver alone", baseline))
    print(f"  ratio: {sorted(ours)[len(ours) // 2] / sorted(baseline)[len(baseline) // 2]:.2f}x the baseline median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    anyio.run(bench, parser.parse_args().repeat)


if __name__ == "__main__":
    main()
