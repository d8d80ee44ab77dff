"""VM records in the store, QEMU for the real thing, billing by state.

A VM pays on a lease (``scheduler.leases``) at the rate of the state it is in:
its vCPUs, memory and disk while it boots or runs, its disk alone while
stopped. Every change of state bills up to that moment at the old rate and
holds the next lease at the new one, in the same transaction, so no
millisecond is billed at the wrong rate or twice. A start the budget cannot
cover is refused; a VM whose lease the budget cannot renew is stopped, its
disk kept and its billing ended, until a start finds the budget again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import BudgetExceeded, CloudSkillsError, InvalidInput, NotFound
from sandbox.qemu import FLAVORS, Flavor, QemuDriver
from sandbox.vm_image import guest_image
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.pricing import Usage
from scheduler.resources import LiveQuota
from scheduler.store import Store
from scheduler.tasks import new_id
from skills.base import Platform
from skills.vm.rows import Vm, VmSnapshot

log = logging.getLogger("cloudskills.vms")

LIVE_STATES = ("creating", "starting", "running", "stopping", "stopped", "deleting")
# Billed for vCPUs and memory: booting, running, or shutting down.
POWERED_STATES = ("creating", "starting", "running", "stopping")
KIND = "vm"


def per_second(row: Vm, state: str) -> Usage:
    """What a second of this VM uses in ``state``: its disk always, vCPUs and memory when powered."""
    meters = {"vm.disk_mib_ms": row.disk_mib * 1000}
    if state in POWERED_STATES:
        meters |= {"vm.vcpu_ms": row.vcpus * 1000, "vm.mib_ms": row.memory_mib * 1000}
    return Usage.of(meters)


def count_live(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).where(Vm.tenant_id == tenant_id, Vm.state.in_(LIVE_STATES))) or 0)


QUOTA = LiveQuota("max_live_vms", 4, "VMs", "delete one with vm_delete (vm_list shows them)", count_live)


def flavor_of(row: Vm) -> Flavor:
    return FLAVORS[row.flavor]


class VmManager:
    kind = KIND

    def __init__(self, store: Store, leases: Leases, driver: QemuDriver) -> None:
        self.store = store
        self.leases = leases
        self.driver = driver

    def _price_state(self, session: Session, row: Vm, state: str) -> None:
        """Bill up to now at the old state's rate and hold a lease at ``state``'s."""
        self.leases.set_rate(
            session, kind=KIND, resource_id=row.id, tenant_id=row.tenant_id, op=state, per_s=per_second(row, state)
        )

    async def create(self, tenant_id: str, flavor_name: str, ttl_s: int) -> Vm:
        flavor = FLAVORS.get(flavor_name)
        if flavor is None:
            raise InvalidInput(f"unknown flavor {flavor_name!r}: use one of {', '.join(FLAVORS)}.")
        if not self.driver.image.disk.exists():
            raise CloudSkillsError("the VM guest is not built: run `cloudskills images build`, then try again.")
        row = Vm(
            id=new_id("vm"),
            tenant_id=tenant_id,
            flavor=flavor.name,
            vcpus=flavor.vcpus,
            memory_mib=flavor.memory_mib,
            disk_mib=flavor.disk_mib,
            ttl_s=ttl_s,
        )
        with self.store.transaction() as session:
            QUOTA.check(session, tenant_id)
            session.add(row)  # the record first: its disk and process are never strays
            self._price_state(session, row, "creating")  # refused here, before a boot, if the budget is short
        vm_id = row.id
        try:
            await anyio.to_thread.run_sync(self.driver.create, vm_id, flavor)
            accel = await anyio.to_thread.run_sync(self.driver.start, vm_id, flavor)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.driver.delete, vm_id)
                self._end(vm_id, "failed", "failed_to_start")
            raise
        with self.store.transaction() as session:
            started = session.get(Vm, vm_id, with_for_update=True)
            assert started is not None
            self._price_state(session, started, "running")
            started.state, started.accel = "running", accel
            return started

    def get(self, tenant_id: str, vm_id: str) -> Vm:
        """A live VM of this tenant; another tenant's looks exactly like a missing one."""
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"no VM {vm_id!r}: call vm_list to see yours, or vm_create.")
            if row.state in ("deleted", "failed"):
                raise NotFound(f"VM {vm_id!r} was deleted ({row.delete_reason}): create a new one with vm_create.")
            return row

    def running(self, tenant_id: str, vm_id: str) -> Vm:
        row = self.get(tenant_id, vm_id)
        if row.state == "running":
            return row
        if row.state == "stopped":
            raise InvalidInput(f"VM {vm_id!r} is stopped: start it with vm_start, then retry.")
        raise InvalidInput(f"VM {vm_id!r} is {row.state}: wait for that to finish (vm_describe shows it), then retry.")

    def owns(self, tenant_id: str, vm_id: str) -> bool:
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id)
            return row is not None and row.tenant_id == tenant_id

    def list_live(self, tenant_id: str | None = None) -> list[Vm]:
        query = select(Vm).where(Vm.state.in_(LIVE_STATES)).order_by(Vm.created_at)
        if tenant_id is not None:
            query = query.where(Vm.tenant_id == tenant_id)
        with self.store.transaction() as session:
            return list(session.scalars(query))

    def snapshots(self, vm_id: str) -> list[VmSnapshot]:
        with self.store.transaction() as session:
            query = select(VmSnapshot).where(VmSnapshot.vm_id == vm_id).order_by(VmSnapshot.created_at)
            return list(session.scalars(query))

    def _change_state(self, vm_id: str, state: str, expected: tuple[str, ...], bill: bool = True) -> Vm:
        """Bill up to now at the old state's rate, then move to ``state`` (priced at its rate).

        Powering up is refused when the budget cannot cover its lease; powering down
        never is: when even the disk's lease is past the budget, billing ends there.
        ``bill=False`` moves a VM whose billing has ended already (stopped for money)."""
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id, with_for_update=True)
            assert row is not None
            if row.state not in expected:
                raise InvalidInput(f"VM {vm_id!r} is {row.state}, so it cannot be made {state}: vm_describe shows it.")
            if bill:
                try:
                    self._price_state(session, row, state)
                except BudgetExceeded:
                    if state in POWERED_STATES:
                        raise
                    self.leases.close(session, vm_id, "budget")
            row.state = state
            return row

    async def stop(self, vm_id: str) -> Vm:
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id)
            assert row is not None
            if row.state == "stopped":
                return row
        # "stopping" first: the reaper never takes a VM shut down on purpose for a crashed one.
        self._change_state(vm_id, "stopping", ("running",))
        with anyio.CancelScope(shield=True):  # a VM half shut down is worse than a late answer
            await anyio.to_thread.run_sync(self.driver.stop, vm_id)
        return self._change_state(vm_id, "stopped", ("stopping",))

    async def start(self, vm_id: str) -> Vm:
        row = self._change_state(vm_id, "starting", ("stopped",))
        try:
            await anyio.to_thread.run_sync(self.driver.start, vm_id, flavor_of(row))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.driver.stop, vm_id)
                self._change_state(vm_id, "stopped", ("starting",))
            raise
        return self._change_state(vm_id, "running", ("starting",))

    async def snapshot(self, row: Vm) -> VmSnapshot:
        snapshot = VmSnapshot(id=new_id("snap"), vm_id=row.id, tenant_id=row.tenant_id, created_at=utcnow())
        await anyio.to_thread.run_sync(self.driver.snapshot, row.id, snapshot.id)
        with self.store.transaction() as session:
            session.add(snapshot)
        return snapshot

    async def restore(self, row: Vm, snapshot_id: str) -> Vm:
        """The disk as it was at the snapshot; a running VM is stopped for it and started again."""
        with self.store.transaction() as session:
            snapshot = session.get(VmSnapshot, snapshot_id)
            if snapshot is None or snapshot.vm_id != row.id or snapshot.tenant_id != row.tenant_id:
                raise NotFound(f"no snapshot {snapshot_id!r} of VM {row.id!r}: vm_describe lists its snapshots.")
        was_running = row.state == "running"
        if was_running:
            await self.stop(row.id)
        await anyio.to_thread.run_sync(self.driver.restore, row.id, snapshot_id)
        return await self.start(row.id) if was_running else self.get(row.tenant_id, row.id)

    async def delete(self, vm_id: str, reason: str) -> bool:
        """Kill the VM, remove its disk and bill it up to now; False when it was already gone."""
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id, with_for_update=True)
            if row is None or row.state not in LIVE_STATES or row.state == "creating":
                return False
            self.leases.close(session, vm_id, reason)  # nothing is billed past this moment
            row.state, row.delete_reason = "deleting", reason
        await anyio.to_thread.run_sync(self.driver.delete, vm_id)
        self._end(vm_id, "deleted", reason)
        return True

    def _end(self, vm_id: str, state: str, reason: str) -> None:
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id, with_for_update=True)
            assert row is not None
            now = utcnow()
            # A VM that never booted (a failed start) costs nothing.
            self.leases.close(session, vm_id, reason, now if state == "deleted" else row.created_at)
            row.state, row.deleted_at, row.delete_reason = state, now, reason

    async def stop_for_budget(self, resource_id: str) -> None:
        """Stop a running VM whose lease the budget no longer covers; its disk stays."""
        with self.store.transaction() as session:
            row = session.get(Vm, resource_id)
            if row is None or row.state != "running":
                return
        self._change_state(resource_id, "stopping", ("running",), bill=False)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.driver.stop, resource_id)
        self._change_state(resource_id, "stopped", ("stopping",), bill=False)

    async def recover(self) -> list[str]:
        """On a server's start: VMs a dead process was creating or deleting are removed."""
        with self.store.transaction() as session:
            half = list(session.scalars(select(Vm.id).where(Vm.state.in_(("creating", "deleting")))))
        for vm_id in half:
            await anyio.to_thread.run_sync(self.driver.delete, vm_id)
            self._end(vm_id, "deleted", "server_stopped")
        return half

    async def reap(self) -> list[str]:
        """Delete VMs past their TTL; stop the books on VMs whose QEMU died; kill stray QEMU processes."""
        now = utcnow()
        reaped: list[str] = []
        for row in self.list_live():
            try:
                if row.created_at + timedelta(seconds=row.ttl_s) < now and row.state in ("running", "stopped"):
                    if await self.delete(row.id, "ttl"):
                        reaped.append(row.id)
                elif row.state == "running" and not self.driver.running(row.id):
                    log.warning("VM %s's QEMU process is gone: marking it stopped", row.id)
                    self._change_state(row.id, "stopped", ("running",))
            except CloudSkillsError as exc:
                log.warning("could not reap VM %s: %s", row.id, exc)
        processes = await anyio.to_thread.run_sync(self.driver.processes)
        for vm_id, pid in processes.items():
            if not self._powered(vm_id):
                log.info("killing the stray QEMU process %d (VM %s)", pid, vm_id)
                self.driver.kill_process(pid)
                reaped.append(vm_id)
        return reaped

    def _powered(self, vm_id: str) -> bool:
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id)
            return row is not None and row.state in (*POWERED_STATES, "deleting")


def from_platform(platform: Platform) -> VmManager:
    """VMs on QEMU, from the guest image built in the machine's image cache."""
    qemu = QemuDriver(guest_image(platform.settings.image_cache), platform.store.store_id, platform.home / "vms")
    return VmManager(platform.store, platform.leases, qemu)
