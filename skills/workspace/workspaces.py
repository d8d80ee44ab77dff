"""Workspaces: persistent, size-capped filesystems that sandboxes mount and agents share.

    create ──▶ record (creating) ──▶ ext4 image made and mounted on the host
           ──▶ live, its lease opened (one transaction) ──▶ ... ──▶ delete: lease
               closed, record deleted, then unmounted and its image removed

A workspace's bytes are on the host of the server that made it (``disks``);
its record, lease and snapshots' records are in the store. Files are read and
written by the server itself (``files``), or by sandboxes that bind its mount
(the sandbox skill asks for it through ``skills.volumes``). The engine's labels
say which sandboxes bind it now: one that is bound is neither deleted nor
restored under them (the error names them).

A workspace pays, on a lease, for its cap and each snapshot's, by the GiB-hour.
**At budget**: when the budget cannot cover the next lease, the workspace is
*stopped*: billing ends, its data is kept and still readable (files, read-only
mounts, lists, deletes); writes, writable mounts and snapshots start its billing
again if the budget covers a lease, and are refused otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import BackendUnavailable, BudgetExceeded, CloudSkillsError, InvalidInput, NotFound
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE, LABEL_VOLUME_PREFIX
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.pricing import Usage
from scheduler.store import Store
from scheduler.tasks import new_id
from skills.base import Platform
from skills.volumes import WorkspaceVolumes
from skills.workspace import files
from skills.workspace.disks import HostDisks
from skills.workspace.limits import LIVE, QUOTA, check_room, limits_of
from skills.workspace.rows import Workspace, WorkspaceSnapshot

log = logging.getLogger("cloudskills.workspaces")

KIND = "workspace"
METER = "workspace.storage_mib_ms"
USABLE = ("live", "stopped")


def per_second(mib: int) -> Usage:
    return Usage.of({METER: mib * 1000})


@dataclass(frozen=True)
class WorkspaceView:
    row: Workspace
    snapshots: list[WorkspaceSnapshot]
    used_bytes: int
    usable_bytes: int
    mounted_by: list[str]


class WorkspaceManager(WorkspaceVolumes):
    kind = KIND

    def __init__(self, store: Store, leases: Leases, disks: HostDisks, driver: DockerDriver | None) -> None:
        self.store = store
        self.leases = leases
        self.disks = disks
        self.driver = driver

    def _usable(self) -> None:
        why = HostDisks.usable()
        if why is not None:
            raise BackendUnavailable(f"this server cannot keep workspaces: {why}. Run it as root on a Linux host.")

    # -- the ops ---------------------------------------------------------------

    async def create(self, tenant_id: str, name: str, size_mib: int) -> Workspace:
        """A new, empty workspace, mounted, billed from the moment it is live."""
        self._usable()
        row = Workspace(id=new_id("ws"), tenant_id=tenant_id, name=name, size_mib=size_mib, state="creating")
        with self.store.transaction() as session:
            QUOTA.check(session, tenant_id)
            check_room(session, tenant_id, size_mib, f"a workspace of {size_mib} MiB")
            taken = select(Workspace.id).where(
                Workspace.tenant_id == tenant_id, Workspace.name == name, Workspace.state.in_(LIVE)
            )
            if session.scalar(taken) is not None:
                raise InvalidInput(f"you already have a workspace named {name!r}: use it, or pick another name.")
            self.leases.check(session, tenant_id, KIND, per_second(size_mib), ask_less="a smaller size_mib")
            session.add(row)  # the record first: an image without one is a leftover recover removes
        try:
            await anyio.to_thread.run_sync(self.disks.make, row.id, size_mib)
            with self.store.transaction() as session:
                live = self._row(session, row.id)
                live.state = "live"
                self._open_lease(session, live)
                return live
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.disks.remove, row.id)
                self._end(row.id, "failed")
            raise

    def get(self, tenant_id: str, workspace_id: str) -> Workspace:
        """A usable workspace of this tenant; another tenant's looks exactly like a missing one."""
        with self.store.transaction() as session:
            row = session.get(Workspace, workspace_id)
            if row is None or row.tenant_id != tenant_id or row.state not in USABLE:
                raise NotFound(
                    f"no workspace {workspace_id!r}: workspace_list shows yours; workspace_create makes one."
                )
            return row

    def list_live(self, tenant_id: str) -> list[Workspace]:
        with self.store.transaction() as session:
            query = select(Workspace).where(Workspace.tenant_id == tenant_id, Workspace.state.in_(USABLE))
            return list(session.scalars(query.order_by(Workspace.created_at, Workspace.name)))

    def list_all_live(self) -> list[Workspace]:
        """Every tenant's (for an operator, and for tests' clean-up)."""
        with self.store.transaction() as session:
            return list(session.scalars(select(Workspace).where(Workspace.state.in_(USABLE))))

    async def describe(self, tenant_id: str, workspace_id: str) -> WorkspaceView:
        row = self.get(tenant_id, workspace_id)
        used, usable = await anyio.to_thread.run_sync(self.disks.usage, row.id)
        mounted_by = await self.mounted_by(row.id)
        return WorkspaceView(row, self.snapshots(row.id), used, usable, mounted_by)

    def snapshots(self, workspace_id: str) -> list[WorkspaceSnapshot]:
        with self.store.transaction() as session:
            query = select(WorkspaceSnapshot).where(WorkspaceSnapshot.workspace_id == workspace_id)
            return list(session.scalars(query.order_by(WorkspaceSnapshot.created_at)))

    async def mounted_by(self, workspace_id: str) -> list[str]:
        """The sandboxes whose containers bind the workspace now (the engine's labels): running
        ones, and paused ones (a resume binds it again, so it must still be there)."""
        if self.driver is None:
            return []
        found = await anyio.to_thread.run_sync(self.driver.list_labelled, {LABEL_STORE: self.store.store_id})
        label = f"{LABEL_VOLUME_PREFIX}{workspace_id}"
        return sorted(
            c.labels.get(LABEL_SANDBOX, c.container_id[:12])
            for c in found
            if (c.running or c.checkpointed) and label in c.labels
        )

    async def _refuse_if_mounted(self, workspace_id: str, doing: str) -> None:
        mounted_by = await self.mounted_by(workspace_id)
        if mounted_by:
            raise InvalidInput(
                f"workspace {workspace_id!r} is mounted by sandbox {', '.join(mounted_by)}, so it cannot be {doing} "
                "under them: destroy them (sandbox_destroy) or let their sandbox_run end, then retry."
            )

    async def delete(self, tenant_id: str, workspace_id: str) -> bool:
        """Delete a workspace, its data and its snapshots; False if it was deleted already."""
        with self.store.transaction() as session:
            row = session.get(Workspace, workspace_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(
                    f"no workspace {workspace_id!r}: workspace_list shows yours; workspace_create makes one."
                )
            if row.state not in USABLE:
                return False
        await self._refuse_if_mounted(workspace_id, "deleted")
        snapshot_ids = [s.id for s in self.snapshots(workspace_id)]
        with self.store.transaction() as session:
            row = self._row(session, workspace_id, lock=True)
            if row.state not in USABLE:
                return False
            self.leases.close(session, workspace_id, "deleted")
            row.state, row.deleted_at = "deleted", utcnow()
            for snapshot in session.scalars(select(WorkspaceSnapshot).where(WorkspaceSnapshot.workspace_id == row.id)):
                session.delete(snapshot)
        await anyio.to_thread.run_sync(self.disks.remove, workspace_id)
        for snapshot_id in snapshot_ids:
            self.disks.drop_snapshot(snapshot_id)
        return True

    async def snapshot(self, tenant_id: str, workspace_id: str) -> WorkspaceSnapshot:
        """A frozen copy of the workspace, counted and billed at its cap until deleted."""
        row = self.get(tenant_id, workspace_id)
        with self.store.transaction() as session:
            most = limits_of(session, tenant_id).max_workspace_snapshots
            count = select(func.count()).where(WorkspaceSnapshot.workspace_id == row.id)
            if int(session.scalar(count) or 0) >= most:
                raise InvalidInput(
                    f"workspace {row.id!r} has {most} snapshots, your quota's most: delete one with "
                    "workspace_delete_snapshot, then retry."
                )
            check_room(session, tenant_id, row.size_mib, "a snapshot")
        snapshot = WorkspaceSnapshot(
            id=new_id("wsnap"), workspace_id=row.id, tenant_id=tenant_id, size_mib=row.size_mib
        )
        snapshot.stored_bytes = await anyio.to_thread.run_sync(self.disks.take_snapshot, row.id, snapshot.id)
        try:
            with self.store.transaction() as session:
                session.add(snapshot)
                session.flush()
                self._bill(session, self._row(session, row.id, lock=True))
                return snapshot
        except BaseException:
            self.disks.drop_snapshot(snapshot.id)
            raise

    async def restore(self, tenant_id: str, workspace_id: str, snapshot_id: str) -> WorkspaceSnapshot:
        """Make the workspace's whole content the snapshot's."""
        row = self.get(tenant_id, workspace_id)
        snapshot = self._snapshot(row.id, snapshot_id)
        await self._refuse_if_mounted(row.id, "restored")
        await anyio.to_thread.run_sync(self.disks.restore, row.id, snapshot.id)
        return snapshot

    def delete_snapshot(self, tenant_id: str, workspace_id: str, snapshot_id: str) -> None:
        row = self.get(tenant_id, workspace_id)
        with self.store.transaction() as session:
            snapshot = session.get(WorkspaceSnapshot, snapshot_id)
            if snapshot is None or snapshot.workspace_id != row.id:
                raise NotFound(f"no snapshot {snapshot_id!r} of workspace {row.id!r}: workspace_describe lists them.")
            session.delete(snapshot)
            session.flush()
            self._bill(session, self._row(session, row.id, lock=True), never_refused=True)
        self.disks.drop_snapshot(snapshot_id)

    def _snapshot(self, workspace_id: str, snapshot_id: str) -> WorkspaceSnapshot:
        with self.store.transaction() as session:
            snapshot = session.get(WorkspaceSnapshot, snapshot_id)
            if snapshot is None or snapshot.workspace_id != workspace_id:
                raise NotFound(
                    f"no snapshot {snapshot_id!r} of workspace {workspace_id!r}: workspace_describe lists them."
                )
            return snapshot

    # -- files, and the port other skills use -----------------------------------

    async def write(self, tenant_id: str, workspace_id: str, path: str, data: bytes) -> str:
        row = self.writable(tenant_id, workspace_id)
        return await anyio.to_thread.run_sync(self._write, row.id, path, data)

    async def read(self, tenant_id: str, workspace_id: str, path: str, max_bytes: int) -> tuple[bytes, int]:
        row = self.get(tenant_id, workspace_id)
        return await anyio.to_thread.run_sync(files.read_file, self.disks.mount(row.id), path, max_bytes)

    async def list_files(
        self, tenant_id: str, workspace_id: str, path: str, max_entries: int
    ) -> tuple[list[files.Entry], bool]:
        row = self.get(tenant_id, workspace_id)
        return await anyio.to_thread.run_sync(files.list_dir, self.disks.mount(row.id), path, max_entries)

    def _write(self, workspace_id: str, path: str, data: bytes) -> str:
        return files.write_file(self.disks.mount(workspace_id), path, data)

    def writable(self, tenant_id: str, workspace_id: str) -> Workspace:
        """A workspace that may be written: one stopped for money is billed again first."""
        row = self.get(tenant_id, workspace_id)
        if row.state == "stopped":
            with self.store.transaction() as session:
                stopped = self._row(session, row.id, lock=True)
                if stopped.state == "stopped":
                    try:
                        self._open_lease(session, stopped)
                    except BudgetExceeded as exc:
                        raise BudgetExceeded(
                            f"workspace {row.id!r} is stopped, its data kept and readable, because the budget ran "
                            f"out; {exc.message[0].lower()}{exc.message[1:]}"
                        ) from exc
                    stopped.state = "live"
                return stopped
        return row

    def mount_source(self, tenant_id: str, workspace_id: str, read_only: bool) -> str:
        row = self.get(tenant_id, workspace_id) if read_only else self.writable(tenant_id, workspace_id)
        return str(self.disks.mount(row.id))

    def read_bytes(self, tenant_id: str, workspace_id: str, path: str, max_bytes: int) -> bytes:
        row = self.get(tenant_id, workspace_id)
        data, size = files.read_file(self.disks.mount(row.id), path, max_bytes + 1)
        if size > max_bytes:
            raise InvalidInput(
                f"{path!r} is {size} bytes, more than the {max_bytes} this call reads at most: split it into "
                "smaller files."
            )
        return data

    def write_bytes(self, tenant_id: str, workspace_id: str, path: str, data: bytes) -> str:
        return self._write(self.writable(tenant_id, workspace_id).id, path, data)

    # -- rows and money -----------------------------------------------------------

    def _row(self, session: Session, workspace_id: str, lock: bool = False) -> Workspace:
        row = session.get(Workspace, workspace_id, with_for_update=lock, populate_existing=lock)
        assert row is not None
        return row

    def _billed_mib(self, session: Session, row: Workspace) -> int:
        copies = select(func.coalesce(func.sum(WorkspaceSnapshot.size_mib), 0)).where(
            WorkspaceSnapshot.workspace_id == row.id
        )
        return row.size_mib + int(session.scalar(copies) or 0)

    def _open_lease(self, session: Session, row: Workspace) -> None:
        per_s = per_second(self._billed_mib(session, row))
        self.leases.open(session, kind=KIND, resource_id=row.id, tenant_id=row.tenant_id, op="storage", per_s=per_s)

    def _bill(self, session: Session, row: Workspace, never_refused: bool = False) -> None:
        """Bill its cap and snapshots at their new total (a live one; a stopped one stays unbilled)."""
        if row.state != "live":
            return
        per_s = per_second(self._billed_mib(session, row))
        if not never_refused:
            self.leases.rerate(session, row.id, op="storage", per_s=per_s)
            return
        try:
            with session.begin_nested():
                self.leases.rerate(session, row.id, op="storage", per_s=per_s)
        except BudgetExceeded:  # even the smaller lease is not covered: stopped, as a renewal would
            self.leases.close(session, row.id, "budget")
            row.state = "stopped"

    def _end(self, workspace_id: str, state: str) -> None:
        with self.store.transaction() as session:
            row = self._row(session, workspace_id, lock=True)
            self.leases.close(session, workspace_id, state)
            row.state, row.deleted_at = state, utcnow()

    # -- the kind's duties ----------------------------------------------------------

    async def recover(self) -> list[str]:
        """After a restart: remove what a create left half made; mount every workspace again
        (after a host's reboot their mounts are gone; otherwise they are still there)."""
        if HostDisks.usable() is not None:
            return []
        with self.store.transaction() as session:
            rows = list(session.execute(select(Workspace.id, Workspace.state).where(Workspace.state.in_(LIVE))))
        handled = []
        for workspace_id, state in rows:
            if state == "creating":
                await anyio.to_thread.run_sync(self.disks.remove, workspace_id)
                self._end(workspace_id, "failed")
                handled.append(workspace_id)
                continue
            try:
                await anyio.to_thread.run_sync(self.disks.mount, workspace_id)
            except CloudSkillsError as exc:
                log.warning("workspace %s is not mounted: %s", workspace_id, exc.message)
        return handled

    async def reap(self) -> list[str]:
        """Nothing expires: a workspace lives until deleted or stopped for money."""
        return []

    async def stop_for_budget(self, resource_id: str) -> None:
        """The budget could not renew the lease (its billing has ended): writes, writable
        mounts and snapshots are refused until one is covered; the data is kept."""
        with self.store.transaction() as session:
            row = session.get(Workspace, resource_id, with_for_update=True)
            if row is not None and row.state == "live":
                row.state = "stopped"


def from_platform(platform: Platform) -> WorkspaceManager:
    """Workspaces on this server's host, under its data dir; the engine says who mounts them."""
    return WorkspaceManager(platform.store, platform.leases, HostDisks(platform.home / "workspaces"), platform.docker)
