"""Database instances: records in the store, engines for the real thing, metered billing.

An instance's record is written (``creating``) before its engine makes
anything, and marked ``deleted`` only after the engine has removed it all, so
whatever carries this store's label with no live record is a stray the reaper
removes. A live instance is billed in intervals (see ``scheduler.metering``):
its size's instance time while a server runs for it, and its storage.
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
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler import ledger, metering
from scheduler.errors import CloudSkillsError, InvalidInput, NotFound, QuotaExceeded
from scheduler.models import Database, DatabaseSnapshot, utcnow
from scheduler.pricing import PriceCatalog, Usage
from scheduler.store import Store
from scheduler.tasks import new_id
from skills.db.engines.base import SIZES, Engine, Instance, Placement
from skills.db.engines.postgres import PostgresEngine

log = logging.getLogger("cloudskills.databases")

LIVE_STATES = ("creating", "running", "deleting")
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


def usage_per_ms(row: Database) -> Usage:
    """What a millisecond of this instance costs: storage always, a server's time when one runs."""
    meters = {"database.storage_mib_ms": row.storage_mib}
    if row.engine != "sqlite":
        meters[f"database.instance_ms.{row.size}"] = 1
    return Usage.of(meters)


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    db_id: str
    size_bytes: int
    created_at: datetime


class DatabaseManager:
    def __init__(
        self,
        store: Store,
        catalog: PriceCatalog,
        engines: Mapping[str, Engine],
        snapshots_dir: Path,
        meter_interval_s: float = 60.0,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.engines = dict(engines)
        self.snapshots_dir = snapshots_dir
        self.meter_interval_s = meter_interval_s
        # Deletes under way in this process: the reaper leaves them to finish.
        self._deleting: set[str] = set()

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
            session.add(row)  # the record first: nothing the engine makes is ever a stray
        try:
            placement = await anyio.to_thread.run_sync(engine.provision, instance_of(row), size)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon(row.id)
            raise
        return self._mark_running(db_id, placement)

    def _check_admission(self, session: Session, tenant_id: str, name: str) -> None:
        tenant = ledger.locked_tenant(session, tenant_id)
        live = list(
            session.scalars(
                select(Database.name).where(Database.tenant_id == tenant_id, Database.state.in_(LIVE_STATES))
            )
        )
        if len(live) >= tenant.max_live_databases:
            raise QuotaExceeded(
                f"you have {len(live)} live databases, your quota's most: delete one with db_delete "
                "(db_list shows them), then retry."
            )
        if name in live:
            raise InvalidInput(f"you already have a database named {name!r}: pick another name, or use that one.")
        if name in RESERVED_NAMES:
            raise InvalidInput(f"{name!r} is a name PostgreSQL keeps for itself: pick another name.")

    def _mark_running(self, db_id: str, placement: Placement) -> Database:
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
            row.billed_until = utcnow()  # billed from the moment it answers
            return row

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

    def get(self, tenant_id: str, db_id: str) -> Database:
        """A running instance of this tenant; another tenant's looks exactly like a missing one."""
        with self.store.transaction() as session:
            row = session.get(Database, db_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"no database {db_id!r}: call db_list to see yours, or db_create.")
            if row.state != "running":
                raise NotFound(f"database {db_id!r} is {row.state}: db_list shows the ones you can use.")
            return row

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
            if row is None or row.state not in ("running", "deleting"):
                return False
            row.state = "deleting"
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
        finally:
            self._deleting.discard(db_id)
        with self.store.transaction() as session:
            ended = session.get(Database, db_id, with_for_update=True)
            assert ended is not None
            if ended.state == "deleted":
                return
            now = utcnow()
            self._bill(session, ended, now)
            ended.state, ended.deleted_at = "deleted", now

    def _bill(self, session: Session, row: Database, end: datetime) -> None:
        posting = ledger.Posting(f"database:{row.id}", row.tenant_id, None, "db", "instance")
        row.billed_until = metering.bill_interval(
            session, self.catalog, posting, row.billed_until, end, usage_per_ms(row)
        )

    def meter(self) -> int:
        """Bill every running instance up to now, where its last interval is old enough; how many were billed."""
        now = utcnow()
        billed = 0
        with self.store.transaction() as session:
            rows = session.scalars(select(Database).where(Database.state.in_(("running", "deleting"))))
            for row in rows:
                if (now - row.billed_until).total_seconds() >= self.meter_interval_s:
                    self._bill(session, row, now)
                    billed += 1
        return billed

    async def reap(self) -> list[str]:
        """Finish deletes a dead process left, and remove strays no live record owns."""
        reaped: list[str] = []
        with self.store.transaction() as session:
            deleting = list(session.scalars(select(Database.id).where(Database.state == "deleting")))
        for db_id in deleting:
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
