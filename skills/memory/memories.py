"""Memories: durable, searchable by meaning, per agent and per tenant.

A memory lives in a namespace of its tenant: an agent's own (named after the
agent, its default) or ``shared`` (every agent of the tenant); any agent of the
tenant may name any of its tenant's namespaces, and nothing of another tenant is
ever found, by search, get, list or id. A memory's row, its vector and its words
are written in one transaction of the store, so every replica sees them at once
and a restart loses nothing. Expired memories are never answered and are purged
by the reaper. Each namespace pays for its storage on a lease (see storage.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import InvalidInput, NotFound, QuotaExceeded
from scheduler import ledger
from scheduler.leases import Leases
from scheduler.models import utcnow
from scheduler.storage_leases import StorageLease
from scheduler.store import Store
from scheduler.tasks import new_id
from skills.embeddings import TextEmbedder
from skills.memory.engines.base import Entry, MemoryIndex, Vector, query_words
from skills.memory.limits import LIVE, MEMORIES, NAMESPACES, check_items, count_memories, size_of
from skills.memory.models import MemoryIn
from skills.memory.rows import Memory, MemoryNamespace
from skills.memory.search import Found, alive, candidates, fuse, metadata_filter

log = logging.getLogger("cloudskills.memory")

UNNAMED_AGENT = "default"
PURGE_BATCH = 500
DELETE_BATCH = 1000


KIND = "memory"


@dataclass(frozen=True)
class Stored:
    memory: Memory
    namespace: str
    replaced: bool


class MemoryManager:
    kind = KIND

    def __init__(self, store: Store, leases: Leases, index: MemoryIndex, embedder: TextEmbedder) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        # A namespace's storage: billed from its first memory to its last, a write refused for
        # money, a delete or an expiry billing less at once and never refused.
        stopped = "memory namespace {name} is stopped, its memories kept and still readable, because the budget ran out"
        self.storage = StorageLease(leases, KIND, "memory.storage_mib_ms", stopped)

    @staticmethod
    def namespace_for(name: str | None, agent: str | None) -> str:
        """The namespace a call means: the one it names, else its agent's own."""
        return name or agent or UNNAMED_AGENT

    # -- writes ----------------------------------------------------------------

    async def put(
        self, tenant_id: str, namespace: str, items: Sequence[MemoryIn], vectors: Vector | None = None
    ) -> tuple[list[Stored], int]:
        """Store ``items`` in one transaction, all or none; return them and the tokens embedded.
        ``vectors`` (one per item) skips embedding: for benchmarks of the index alone."""
        await check_items(self.embedder, items)
        tokens = 0
        if vectors is None:
            embedded = await self.embedder.embed([item.text for item in items])
            vectors, tokens = embedded.vectors, embedded.total_tokens
        try:
            with self.store.transaction() as session:
                stored = self._put(session, tenant_id, namespace, items, vectors)
        except IntegrityError as exc:
            raise InvalidInput("another call wrote a memory with the same key at the same moment: call again.") from exc
        return stored, tokens

    def _put(
        self, session: Session, tenant_id: str, name: str, items: Sequence[MemoryIn], vectors: Vector
    ) -> list[Stored]:
        now = utcnow()
        namespace = self._namespace(session, tenant_id, name, create=True)
        assert namespace is not None
        replacing = self._by_keys(session, namespace.id, [item.key for item in items if item.key is not None])
        new = sum(1 for item in items if item.key is None or item.key not in replacing)
        tenant = ledger.locked_tenant(session, tenant_id)
        live, most = count_memories(session, tenant_id), MEMORIES.limit(tenant)
        if live + new > most:
            raise QuotaExceeded(
                f"you have {live} memories and this would add {new}, past your quota of {most}: {MEMORIES.hint}, "
                "then retry."
            )
        stored, drop = [], []
        for item in items:
            expires = now + timedelta(seconds=item.ttl_s) if item.ttl_s else None
            old = replacing.get(item.key) if item.key is not None else None
            if old is not None:
                drop.append(Entry(old.seq, namespace.id, old.text))
                namespace.stored_bytes -= old.size_bytes
                replaced = old.expires_at is None or old.expires_at > now
                # A new row, so a new seq: what indexes memories outside the store (the graphs of
                # engines/graph.py) sees every change as a seq past the ones it holds.
                session.delete(old)
                session.flush()
                row = Memory(id=old.id, tenant_id=tenant_id, namespace_id=namespace.id, created_at=old.created_at)
                if not replaced:
                    row.id, row.created_at = new_id("mem"), now  # an expired one is gone: this is a new memory
                session.add(row)
            else:
                row, replaced = Memory(id=new_id("mem"), tenant_id=tenant_id, namespace_id=namespace.id), False
                row.created_at = now
                session.add(row)
                namespace.memories += 1
            row.key, row.text, row.meta, row.model = item.key, item.text, dict(item.metadata), self.embedder.name
            row.size_bytes, row.updated_at, row.expires_at = size_of(item), now, expires
            namespace.stored_bytes += row.size_bytes
            stored.append(Stored(row, namespace.name, replaced))
        self.index.remove(session, drop)
        session.flush()
        add = [Entry(s.memory.seq, namespace.id, s.memory.text, v) for s, v in zip(stored, vectors, strict=True)]
        self.index.add(session, add)
        namespace.updated_at = now
        self.storage.charge(session, namespace, shrink=True)
        return stored

    def _namespace(self, session: Session, tenant_id: str, name: str, create: bool = False) -> MemoryNamespace | None:
        """The tenant's live namespace of this name; with ``create`` (a write), made if missing, and
        locked after the tenant's row (so two writers of one tenant take their turns)."""
        query = select(MemoryNamespace).where(
            MemoryNamespace.tenant_id == tenant_id, MemoryNamespace.name == name, MemoryNamespace.state.in_(LIVE)
        )
        if create:
            ledger.locked_tenant(session, tenant_id)
            query = query.with_for_update()
        found = session.scalars(query).first()
        if found is None and create:
            NAMESPACES.check(session, tenant_id)
            found = MemoryNamespace(
                id=new_id("mns"), tenant_id=tenant_id, name=name, memories=0, stored_bytes=0, billed_mib=0
            )
            found.state = "live"
            session.add(found)
            session.flush()
        return found

    def _by_keys(self, session: Session, namespace_id: str, keys: list[str]) -> dict[str, Memory]:
        if not keys:
            return {}
        query = select(Memory).where(Memory.namespace_id == namespace_id, Memory.key.in_(keys)).with_for_update()
        rows = session.scalars(query)
        return {row.key: row for row in rows if row.key is not None}

    # -- reads -----------------------------------------------------------------

    async def search(
        self,
        tenant_id: str,
        name: str,
        query: str,
        top_k: int,
        wanted: dict[str, str | int | float | bool | None],
        min_score: float,
    ) -> tuple[list[Found], int]:
        """The best ``top_k`` memories for ``query`` in a namespace, and the tokens embedded."""
        # The words side needs no vector: it runs while the query is embedded on the embedder's
        # thread (in its own short transaction: none is held open across the wait).
        embedding = self.embedder.begin([query])
        by_words: list[int] = []
        with self.store.transaction() as session:
            namespace = self._namespace(session, tenant_id, name)
            if namespace is not None:
                where, words = metadata_filter(wanted), query_words(query)
                by_words = self.index.matching(session, namespace.id, words, candidates(top_k), where)
        embedded = await self.embedder.finished(embedding)
        tokens = embedded.total_tokens
        if namespace is None:
            return [], tokens
        with self.store.transaction() as session:
            namespace = self._namespace(session, tenant_id, name)
            if namespace is None:
                return [], tokens
            found = self._search(session, namespace, query, embedded.vectors[0], top_k, wanted, min_score, by_words)
        return found, tokens

    def _search(
        self,
        session: Session,
        namespace: MemoryNamespace,
        query: str,
        vector: Vector,
        top_k: int,
        wanted: dict[str, str | int | float | bool | None],
        min_score: float,
        by_words: list[int] | None = None,
    ) -> list[Found]:
        """``by_words``: the words side's ranking, when already found."""
        where, n = metadata_filter(wanted), candidates(top_k)
        by_meaning = self.index.nearest(session, namespace.id, vector, n, where)
        if by_words is None:
            by_words = self.index.matching(session, namespace.id, query_words(query), n, where)
        similarity = {seq: score for seq, score in by_meaning if score is not None}
        ranked = fuse([seq for seq, _ in by_meaning], by_words)
        hits: list[Found] = []
        now = utcnow()
        # The best first, a window at a time: most searches read only top_k rows.
        for start in range(0, len(ranked), top_k):
            window = ranked[start : start + top_k]
            fetch = select(Memory).where(Memory.seq.in_([r.seq for r in window]), alive(now))
            rows = {row.seq: row for row in session.scalars(fetch)}
            # What only the words found: its similarity of meaning, for its score.
            unscored = [r.seq for r in window if r.seq in rows and r.seq not in similarity]
            similarity |= self.index.similarity(session, unscored, vector)
            for r in window:
                score = similarity.get(r.seq, -1.0)
                if r.seq in rows and score >= min_score:
                    hits.append(Found(rows[r.seq], namespace.name, round(float(np.clip(score, -1, 1)), 6), r))
            if len(hits) >= top_k:
                break
        return hits[:top_k]

    def get(self, tenant_id: str, memory_id: str) -> tuple[Memory, str]:
        with self.store.transaction() as session:
            found = session.execute(
                select(Memory, MemoryNamespace.name)
                .join(MemoryNamespace, MemoryNamespace.id == Memory.namespace_id)
                .where(Memory.id == memory_id, Memory.tenant_id == tenant_id, alive(utcnow()))
            ).first()
        if found is None:
            raise NotFound(f"no memory {memory_id!r}: memory_search or memory_list show your memories' ids.")
        return found[0], found[1]

    def get_by_key(self, tenant_id: str, name: str, key: str) -> tuple[Memory, str]:
        with self.store.transaction() as session:
            namespace = self._namespace(session, tenant_id, name)
            row = None
            if namespace is not None:
                row = session.scalars(
                    select(Memory).where(Memory.namespace_id == namespace.id, Memory.key == key, alive(utcnow()))
                ).first()
        if row is None:
            raise NotFound(f"no memory with key {key!r} in namespace {name!r}: memory_list shows what it holds.")
        return row, name

    def page(self, tenant_id: str, name: str, after: int, limit: int) -> tuple[list[Memory], int | None]:
        """A page of the namespace's memories, oldest first, and the seq to continue after."""
        with self.store.transaction() as session:
            namespace = self._namespace(session, tenant_id, name)
            if namespace is None:
                return [], None
            rows = list(
                session.scalars(
                    select(Memory)
                    .where(Memory.namespace_id == namespace.id, Memory.seq > after, alive(utcnow()))
                    .order_by(Memory.seq)
                    .limit(limit + 1)
                )
            )
        more = len(rows) > limit
        return rows[:limit], rows[limit - 1].seq if more else None

    def namespaces(self, tenant_id: str) -> list[MemoryNamespace]:
        with self.store.transaction() as session:
            query = (
                select(MemoryNamespace)
                .where(MemoryNamespace.tenant_id == tenant_id, MemoryNamespace.state.in_(LIVE))
                .order_by(MemoryNamespace.name)
            )
            return list(session.scalars(query))

    # -- deletes, expiry, the kind's duties --------------------------------------

    def delete(self, tenant_id: str, memory_id: str) -> int:
        """Delete one memory; 0 when there is none (gone already, or never this tenant's)."""
        with self.store.transaction() as session:
            ledger.locked_tenant(session, tenant_id)  # locks in one order everywhere: tenant, memories, namespace
            query = select(Memory).where(Memory.id == memory_id, Memory.tenant_id == tenant_id).with_for_update()
            row = session.scalars(query).first()
            if row is None:
                return 0
            self._drop(session, [row])
            return 1

    def _drop(self, session: Session, rows: Sequence[Memory]) -> None:
        """Delete memories of one tenant (its row locked first), and bill each namespace what it
        stores after."""
        self.index.remove(session, [Entry(row.seq, row.namespace_id, row.text) for row in rows])
        for namespace_id in {row.namespace_id for row in rows}:
            mine = [row for row in rows if row.namespace_id == namespace_id]
            namespace = session.get(MemoryNamespace, namespace_id, with_for_update=True)
            assert namespace is not None
            namespace.memories -= len(mine)
            namespace.stored_bytes -= sum(row.size_bytes for row in mine)
            namespace.updated_at = utcnow()
            if namespace.state in LIVE:
                self.storage.settle(session, namespace)
        session.execute(delete(Memory).where(Memory.seq.in_([row.seq for row in rows])))

    def delete_namespace(self, tenant_id: str, name: str) -> int:
        """Delete a whole namespace and its memories; how many memories it had (0 if none)."""
        with self.store.transaction() as session:
            namespace = self._namespace(session, tenant_id, name)
            if namespace is None:
                return 0
            namespace.state = "deleting"
            count = namespace.memories
            namespace_id = namespace.id
        self._finish_delete(namespace_id)
        return count

    def _finish_delete(self, namespace_id: str) -> None:
        with self.store.transaction() as session:
            tenant_id = session.scalar(select(MemoryNamespace.tenant_id).where(MemoryNamespace.id == namespace_id))
        while True:
            with self.store.transaction() as session:
                ledger.locked_tenant(session, str(tenant_id))
                batch = select(Memory).where(Memory.namespace_id == namespace_id).limit(DELETE_BATCH)
                rows = list(session.scalars(batch.with_for_update(skip_locked=True)))
                if rows:
                    self._drop(session, rows)
                    continue
                namespace = session.get(MemoryNamespace, namespace_id, with_for_update=True)
                assert namespace is not None
                self.storage.stop(session, namespace, "deleted")
                namespace.state, namespace.deleted_at = "deleted", utcnow()
            self.index.dropped(namespace_id)
            return

    def purge(self) -> list[str]:
        """Delete expired memories, a tenant and a batch at a time; their ids."""
        purged: list[str] = []
        with self.store.transaction() as session:
            tenants = list(session.scalars(select(Memory.tenant_id).where(Memory.expires_at <= utcnow()).distinct()))
        for tenant_id in tenants:
            while True:
                with self.store.transaction() as session:
                    ledger.locked_tenant(session, tenant_id)
                    # Another replica purging at once skips the rows this one has taken, and the other way round.
                    expired = (
                        select(Memory)
                        .where(Memory.tenant_id == tenant_id, Memory.expires_at <= utcnow())
                        .order_by(Memory.seq)
                        .limit(PURGE_BATCH)
                    )
                    rows = list(session.scalars(expired.with_for_update(skip_locked=True)))
                    if not rows:
                        break
                    self._drop(session, rows)
                    purged += [row.id for row in rows]
        return purged

    async def reap(self) -> list[str]:
        """Purge expired memories and finish namespace deletes a dead process left."""
        reaped = self.purge()
        with self.store.transaction() as session:
            deleting = list(session.scalars(select(MemoryNamespace.id).where(MemoryNamespace.state == "deleting")))
        for namespace_id in deleting:
            self._finish_delete(namespace_id)
        return reaped + deleting

    async def recover(self) -> list[str]:
        """Nothing is half made: a memory's row and index entries are written in one transaction."""
        return []

    async def stop_for_budget(self, resource_id: str) -> None:
        """Writes refused, reads still allowed, billing ended (the lease has closed)."""
        with self.store.transaction() as session:
            namespace = session.get(MemoryNamespace, resource_id, with_for_update=True)
            if namespace is not None and namespace.state == "live":
                namespace.state, namespace.billed_mib = "stopped", 0
