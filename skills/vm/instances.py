"""VM records in the store, QEMU for the real thing, billing by state.

A VM is billed in contiguous intervals (``scheduler.metering``) at the rate
of the state it was in: its vCPUs, memory and disk while it boots or runs, its
disk alone while stopped. Every change of state bills up to that moment first,
in the same transaction, so no millisecond is billed at the wrong rate or twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sandbox.qemu import FLAVORS, Flavor, QemuDriver
from scheduler import ledger, metering
from scheduler.errors import CloudSkillsError, InvalidInput, NotFound, QuotaExceeded
from scheduler.models import Vm, VmSnapshot, utcnow
from scheduler.pricing import PriceCatalog, Usage
from scheduler.store import Store
from scheduler.tasks import new_id

log = logging.getLogger("cloudskills.vms")

LIVE_STATES = ("creating", "starting", "running", "stopping", "stopped", "deleting")
# Billed for vCPUs and memory: booting, running, or shutting down.
POWERED_STATES = ("creating", "starting", "running", "stopping")


def usage_per_ms(row: Vm) -> Usage:
    meters = {"vm.disk_mib_ms": row.disk_mib}
    if row.state in POWERED_STATES:
        meters |= {"vm.vcpu_ms": row.vcpus, "vm.mib_ms": row.memory_mib}
    return Usage.of(meters)


def flavor_of(row: Vm) -> Flavor:
    return FLAVORS[row.flavor]


class VmManager:
    def __init__(self, store: Store, catalog: PriceCatalog, driver: QemuDriver, meter_interval_s: float = 60.0) -> None:
        self.store = store
        self.catalog = catalog
        self.driver = driver
        self.meter_interval_s = meter_interval_s

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
            tenant = ledger.locked_tenant(session, tenant_id)
            live = session.scalar(select(func.count()).where(Vm.tenant_id == tenant_id, Vm.state.in_(LIVE_STATES)))
            if (live or 0) >= tenant.max_live_vms:
                raise QuotaExceeded(
                    f"you have {live} VMs, your quota's most: delete one with vm_delete (vm_list shows them), "
                    "then retry."
                )
            session.add(row)  # the record first: its disk and process are never strays
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

    def _change_state(self, vm_id: str, state: str, expected: tuple[str, ...]) -> Vm:
        """Bill up to now at the old state's rate, then move to ``state``."""
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id, with_for_update=True)
            assert row is not None
            if row.state not in expected:
                raise InvalidInput(f"VM {vm_id!r} is {row.state}, so it cannot be made {state}: vm_describe shows it.")
            self._bill(session, row, utcnow())
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
            self._bill(session, row, utcnow())
            row.state, row.delete_reason = "deleting", reason
        await anyio.to_thread.run_sync(self.driver.delete, vm_id)
        self._end(vm_id, "deleted", reason)
        return True

    def _end(self, vm_id: str, state: str, reason: str) -> None:
        with self.store.transaction() as session:
            row = session.get(Vm, vm_id, with_for_update=True)
            assert row is not None
            now = utcnow()
            if state == "deleted":
                self._bill(session, row, now)
            row.state, row.deleted_at, row.delete_reason = state, now, reason

    def _bill(self, session: Session, row: Vm, end: datetime) -> None:
        posting = ledger.Posting(f"vm:{row.id}", row.tenant_id, None, "vm", row.state)
        row.billed_until = metering.bill_interval(
            session, self.catalog, posting, row.billed_until, end, usage_per_ms(row)
        )

    def meter(self) -> int:
        now = utcnow()
        billed = 0
        with self.store.transaction() as session:
            for row in session.scalars(select(Vm).where(Vm.state.in_(LIVE_STATES))):
                if (now - row.billed_until).total_seconds() >= self.meter_interval_s:
                    self._bill(session, row, now)
                    billed += 1
        return billed

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
