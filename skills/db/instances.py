"""Database instances: records in the store, engines for the real thing, metered billing.

An instance's record is written (``creating``) before its engine makes
anything, and marked ``deleted`` only after the engine has removed it all, so
whatever carries this store's label with no live record is a stray the reaper
removes. A live instance pays on a lease (see ``scheduler.leases``): its
size's instance time while a server runs for it, and its storage. When the
budget cannot cover the next lease the instance is suspended, its data kept and
its billing ended; its next use resumes it once the budget covers a lease again.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import BudgetExceeded, CloudSkillsError, InvalidInput, NotFound
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.pricing import Usage
from scheduler.resources import LiveQuota
from scheduler.store import Store
from scheduler.tasks import new_id
from scheduler.workers import Workers
from skills.base import Platform
from skills.db.engines.base import SIZES, Engine, Instance, Placement
from skills.db.engines.postgres import PostgresEngine
from skills.db.engines.sqlite import SqliteEngine
from skills.db.rows import Database, DatabaseSnapshot

log = logging.getLogger("cloudskills.databases")

LIVE_STATES = ("creating", "running", "suspended", "deleting")
KIND = "db"
APP_USER = "app"
# Names PostgreSQL keeps for itself.
RESERVED_NAMES = ("postgres", "template0", "template1", APP_USER)


def instance_of(row: Database) -> Instance:
    return Instance(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        engine=row.engine,
        size=row.size,
        path=row.path,
        container_id=row.container_id,
        volume=row.volume,
        port=row.port,
        user=row.user,
        password=row.password,
    )


def per_second(row: Database) -> Usage:
    """What a second of this instance uses: storage always, a server's time when one runs."""
    meters = {"database.storage_mib_ms": row.storage_mib * 1000}
    if row.engine != "sqlite":
        meters[f"database.instance_ms.{row.size}"] = 1000
    return Usage.of(meters)


def count_live(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(Database.tenant_id == tenant_id, Database.state.in_(LIVE_STATES))
    return int(session.scalar(query) or 0)


QUOTA = LiveQuota("max_live_databases", 8, "databases", "delete one with db_delete (db_list shows them)", count_live)


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    db_id: str
    size_bytes: int
    created_at: datetime


class DatabaseManager:
    kind = KIND

    def __init__(self, store: Store, leases: Leases, engines: Mapping[str, Engine], snapshots_dir: Path) -> None:
        self.store = store
        self.leases = leases
        self.engines = dict(engines)
        self.snapshots_dir = snapshots_dir
        # Deletes under way in this process: the reaper leaves them to finish.
        self._deleting: set[str] = set()
        # The replicas sharing the store, where the process has them: the reaper
        # leaves a delete to the live server that is doing it (``deleting_by``).
        self.workers: Workers | None = None

    def _me(self) -> str | None:
        return self.workers.id if self.workers is not None else None

    def _alive(self) -> set[str]:
        return self.workers.alive() if self.workers is not None else set()

    def engine(self, name: str) -> Engine:
        engine = self.engines.get(name)
        if engine is None:
            raise InvalidInput(f"unknown engine {name!r}: use one of {', '.join(sorted(self.engines))}.")
        return engine

    async def create(self, tenant_id: str, engine_name: str, name: str | None, size_name: str) -> Database:
        """A new instance, returned once it accepts connections."""
        engine = self.engine(engine_name)
        size = SIZES.get(size_name)
        if size is None:
            raise InvalidInput(f"unknown size {size_name!r}: use one of {', '.join(SIZES)}.")
        db_id = new_id("db")
        row = Database(
            id=db_id,
            tenant_id=tenant_id,
            name=name or db_id,
            engine=engine_name,
            size=size_name,
            storage_mib=size.storage_mib,
            user=APP_USER if engine_name != "sqlite" else None,
            password=secrets.token_hex(16) if engine_name != "sqlite" else None,
        )
        with self.store.transaction() as session:
            self._check_admission(session, tenant_id, row.name)
            # Refused here, before any server starts, if the budget cannot cover a lease.
            self.leases.check(session, tenant_id, "database", per_second(row), ask_less="a smaller size")
            session.add(row)  # the record first: nothing the engine makes is ever a stray
        try:
            placement = await anyio.to_thread.run_sync(engine.provision, instance_of(row), size)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon(row.id)
            raise
        return await self._mark_running(db_id, placement)

    def _check_admission(self, session: Session, tenant_id: str, name: str) -> None:
        QUOTA.check(session, tenant_id)
        live = session.scalars(
            select(Database.name).where(Database.tenant_id == tenant_id, Database.state.in_(LIVE_STATES))
        )
        if name in set(live):
            raise InvalidInput(f"you already have a database named {name!r}: pick another name, or use that one.")
        if name in RESERVED_NAMES:
            raise InvalidInput(f"{name!r} is a name PostgreSQL keeps for itself: pick another name.")

    async def _mark_running(self, db_id: str, placement: Placement) -> Database:
        try:
            with self.store.transaction() as session:
                row = session.get(Database, db_id)
                assert row is not None
                row.path, row.container_id, row.volume, row.port = (
                    placement.path,
                    placement.container_id,
                    placement.volume,
                    placement.port,
                )
                row.state = "running"
                self._open_lease(session, row)  # billed from the moment it answers
                return row
        except BudgetExceeded:
            with anyio.CancelScope(shield=True):
                await self._abandon(db_id)
            raise

    def _open_lease(self, session: Session, row: Database) -> None:
        self.leases.open(
            session, kind=KIND, resource_id=row.id, tenant_id=row.tenant_id, op="instance", per_s=per_second(row)
        )

    async def _abandon(self, db_id: str) -> None:
        """A create that failed or was cancelled: remove what the engine made, bill nothing."""
        row = self._row(db_id)
        try:
            await anyio.to_thread.run_sync(self.engine(row.engine).remove, instance_of(row))
        finally:
            with self.store.transaction() as session:
                failed = session.get(Database, db_id)
                assert failed is not None
                failed.state, failed.deleted_at = "failed", utcnow()

    def _row(self, db_id: str) -> Database:
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            assert row is not None
            return row

    def find(self, tenant_id: str, db_id: str) -> Database:
        """A live instance of this tenant in any state; another tenant's looks exactly like a missing one."""
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"no database {db_id!r}: call db_list to see yours, or db_create.")
            if row.state in ("deleted", "failed"):
                raise NotFound(f"database {db_id!r} is {row.state}: db_list shows the ones you can use.")
            return row

    async def get(self, tenant_id: str, db_id: str) -> Database:
        """A running instance of this tenant: a suspended one is resumed first, if the
        budget now covers a lease."""
        row = self.find(tenant_id, db_id)
        if row.state == "suspended":
            return await self.resume(row)
        if row.state != "running":
            raise NotFound(f"database {db_id!r} is {row.state}: db_list shows the ones you can use.")
        return row

    async def resume(self, row: Database) -> Database:
        with self.store.transaction() as session:
            try:
                self.leases.check(session, row.tenant_id, "database", per_second(row))
            except BudgetExceeded as exc:
                raise BudgetExceeded(
                    f"database {row.id!r} is suspended, its data kept, because the budget ran out; "
                    f"{exc.message[0].lower()}{exc.message[1:]}"
                ) from exc
        await anyio.to_thread.run_sync(self.engine(row.engine).resume, instance_of(row))
        with self.store.transaction() as session:
            resumed = session.get(Database, row.id, with_for_update=True)
            assert resumed is not None
            if resumed.state == "suspended":
                resumed.state = "running"
                self._open_lease(session, resumed)
            return resumed

    async def stop_for_budget(self, resource_id: str) -> None:
        """Suspend: the server stops, the data stays, billing has ended."""
        with self.store.transaction() as session:
            row = session.get(Database, resource_id, with_for_update=True)
            if row is None or row.state != "running":
                return
            row.state = "suspended"
        await anyio.to_thread.run_sync(self.engine(row.engine).suspend, instance_of(row))

    def owns(self, tenant_id: str, db_id: str) -> bool:
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            return row is not None and row.tenant_id == tenant_id

    def list_live(self, tenant_id: str) -> list[Database]:
        with self.store.transaction() as session:
            return list(
                session.scalars(
                    select(Database)
                    .where(Database.tenant_id == tenant_id, Database.state.in_(LIVE_STATES))
                    .order_by(Database.created_at)
                )
            )

    def list_all_live(self) -> list[str]:
        """Every tenant's live instances (for an operator, and for tests that check nothing is left)."""
        with self.store.transaction() as session:
            return list(session.scalars(select(Database.id).where(Database.state.in_(LIVE_STATES))))

    def snapshots(self, db_id: str) -> list[SnapshotInfo]:
        with self.store.transaction() as session:
            rows = session.scalars(
                select(DatabaseSnapshot).where(DatabaseSnapshot.db_id == db_id).order_by(DatabaseSnapshot.created_at)
            )
            return [SnapshotInfo(r.id, r.db_id, r.size_bytes, r.created_at) for r in rows]

    async def backup(self, row: Database) -> SnapshotInfo:
        snapshot_id = new_id("snap")
        suffix = "sqlite3" if row.engine == "sqlite" else "dump"
        path = self.snapshots_dir / row.id / f"{snapshot_id}.{suffix}"
        size = await anyio.to_thread.run_sync(self.engine(row.engine).backup, instance_of(row), path)
        snapshot = DatabaseSnapshot(
            id=snapshot_id, db_id=row.id, tenant_id=row.tenant_id, path=str(path), size_bytes=size, created_at=utcnow()
        )
        with self.store.transaction() as session:
            session.add(snapshot)
            return SnapshotInfo(snapshot.id, snapshot.db_id, snapshot.size_bytes, snapshot.created_at)

    async def restore(self, row: Database, snapshot_id: str) -> SnapshotInfo:
        with self.store.transaction() as session:
            snapshot = session.get(DatabaseSnapshot, snapshot_id)
            if snapshot is None or snapshot.db_id != row.id or snapshot.tenant_id != row.tenant_id:
                raise NotFound(f"no snapshot {snapshot_id!r} of database {row.id!r}: db_describe lists its snapshots.")
            path = Path(snapshot.path)
            info = SnapshotInfo(snapshot.id, snapshot.db_id, snapshot.size_bytes, snapshot.created_at)
        if not await anyio.Path(path).exists():
            raise NotFound(f"the file of snapshot {snapshot_id!r} is gone: take a new one with db_backup.")
        await anyio.to_thread.run_sync(self.engine(row.engine).restore, instance_of(row), path)
        return info

    async def delete(self, db_id: str) -> bool:
        """Remove an instance and everything it has, billing it up to now; False if it was already gone."""
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            if row is None or row.state not in ("running", "suspended", "deleting"):
                return False
            again = row.state == "deleting"
            if not again:
                row.state, row.deleting_by = "deleting", self._me()
        if again and not self._take_over(db_id, self._alive()):
            return True  # a live replica is removing it now
        await self._finish_delete(db_id)
        return True

    async def _finish_delete(self, db_id: str) -> None:
        if db_id in self._deleting:
            return  # another call in this process is removing it now
        self._deleting.add(db_id)
        try:
            row = self._row(db_id)
            await anyio.to_thread.run_sync(self.engine(row.engine).remove, instance_of(row))
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.snapshots_dir / db_id, ignore_errors=True))
        except BaseException:
            self._let_go(db_id)  # whichever server reaps next tries again
            raise
        finally:
            self._deleting.discard(db_id)
        with self.store.transaction() as session:
            ended = session.get(Database, db_id, with_for_update=True)
            assert ended is not None
            if ended.state == "deleted":
                return
            now = utcnow()
            self.leases.close(session, db_id, "deleted", now)
            ended.state, ended.deleted_at = "deleted", now

    def _let_go(self, db_id: str) -> None:
        with self.store.transaction() as session:
            row = session.get(Database, db_id, with_for_update=True)
            if row is not None and row.state == "deleting" and row.deleting_by == self._me():
                row.deleting_by = None

    def _take_over(self, db_id: str, alive: set[str]) -> bool:
        """Whether this server finishes a delete: one it is doing, one a try left
        (failed, or from before deleters were recorded), or one whose server has died.
        A live replica's delete under way is its own: removing the same container
        beside it makes Docker refuse one of the two removals."""
        with self.store.transaction() as session:
            row = session.get(Database, db_id, with_for_update=True)
            if row is None or row.state != "deleting":
                return False
            if row.deleting_by is not None and row.deleting_by != self._me() and row.deleting_by in alive:
                return False
            row.deleting_by = self._me()
            return True

    async def reap(self) -> list[str]:
        """Finish deletes a failed try or a dead process left, and remove strays no live record owns."""
        reaped: list[str] = []
        with self.store.transaction() as session:
            deleting = list(session.scalars(select(Database.id).where(Database.state == "deleting")))
        alive = self._alive() if deleting else set()
        for db_id in deleting:
            if not self._take_over(db_id, alive):
                continue
            try:
                await self._finish_delete(db_id)
                reaped.append(db_id)
            except CloudSkillsError as exc:
                log.warning("could not finish deleting database %s: %s", db_id, exc)
        for engine in self.engines.values():
            if isinstance(engine, PostgresEngine):
                reaped += await self._reap_postgres(engine)
        return reaped

    async def _reap_postgres(self, engine: PostgresEngine) -> list[str]:
        containers, volumes = await anyio.to_thread.run_sync(engine.leftovers)
        reaped = []
        for db_id in sorted(set(containers.values()) | set(volumes.values())):
            if self._is_live(db_id):
                continue
            log.info("removing the stray database %s", db_id)
            stray = Instance(id=db_id, tenant_id="", name="", engine="postgres", size="", volume=f"cloudskills-{db_id}")
            await anyio.to_thread.run_sync(engine.remove, stray)
            reaped.append(db_id)
        return reaped

    def _is_live(self, db_id: str) -> bool:
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            return row is not None and row.state in LIVE_STATES

    async def recover(self) -> list[str]:
        """On a server's start: instances a dead process was creating are removed, never billed."""
        with self.store.transaction() as session:
            abandoned = list(session.scalars(select(Database.id).where(Database.state == "creating")))
        for db_id in abandoned:
            try:
                await self._abandon(db_id)
            except CloudSkillsError as exc:
                log.warning("could not remove half-made database %s: %s", db_id, exc)
        return abandoned


def from_platform(platform: Platform) -> DatabaseManager:
    """Both engines: SQLite files in the data dir, PostgreSQL servers on the process's Docker Engine."""
    assert platform.docker is not None
    engines: dict[str, Engine] = {
        "sqlite": SqliteEngine(platform.home / "databases"),
        "postgres": PostgresEngine(platform.docker, platform.store.store_id),
    }
    manager = DatabaseManager(platform.store, platform.leases, engines, platform.home / "snapshots")
    manager.workers = platform.services.get(Workers)
    return manager
