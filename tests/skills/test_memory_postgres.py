"""The memory skill on a PostgreSQL store (pgvector's HNSW and tsvector): the same answers as
on SQLite, across a restart, and shared by two servers (replicas) on one store."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import create_tenant
from skills.memory.rows import Memory
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until
from tests.skills.conftest import memory_settings
from tests.skills.memory_facts import FACTS, QUERIES

pytestmark = [pytest.mark.anyio, pytest.mark.model]


def stored(app: App, memory_id: str) -> bool:
    with app.store.transaction() as session:
        return session.scalar(select(Memory.id).where(Memory.id == memory_id)) is not None


async def test_two_replicas_share_memories_with_expiry_and_replace(settings: Settings, postgres_url: str) -> None:
    one, two = App(memory_settings(database_url=postgres_url)), App(memory_settings(database_url=postgres_url))
    create_tenant(one.store, "rival")
    async with (
        one.running(),
        two.running(),
        mcp_client(one, agent="planner") as planner,
        mcp_client(two, agent="coder") as coder,
        mcp_client(two, tenant="rival") as rival,
    ):
        items = [{"key": key, "text": text} for key, text in list(FACTS.items())[:20]]
        await call(planner, "memory_put_batch", namespace="shared", items=items)
        brief = await call(planner, "memory_put", namespace="shared", text="The demo is at noon.", ttl_s=1)
        hits = (await call(coder, "memory_search", namespace="shared", query="Which weekday can we ship to prod?"))[
            "hits"
        ]
        assert hits[0]["key"] == "deploy-day"
        assert (await call(rival, "memory_search", namespace="shared", query="ship to prod"))["hits"] == []
        assert "no memory" in await call_error(rival, "memory_get", memory_id=hits[0]["memory_id"])

        replaced = await call(coder, "memory_put", namespace="shared", key="deploy-day", text="We ship on Thursdays.")
        assert replaced["replaced"] and replaced["memory_id"] == hits[0]["memory_id"]
        got = await call(planner, "memory_get", namespace="shared", key="deploy-day")
        assert got["text"] == "We ship on Thursdays."
        await until(lambda: not stored(one, brief["memory_id"]), "a replica's reaper purges the expired memory")
        spaces = (await call(coder, "memory_namespaces"))["namespaces"]
        assert [(n["namespace"], n["memories"]) for n in spaces] == [("shared", 20)]
    one.close()
    two.close()


async def test_recall_and_restart_on_postgres(settings: Settings, postgres_url: str) -> None:
    first = App(memory_settings(database_url=postgres_url))
    async with first.running(), mcp_client(first, agent="planner") as client:
        items = [{"key": key, "text": text} for key, text in FACTS.items()]
        for start in range(0, len(items), 50):
            await call(client, "memory_put_batch", namespace="shared", items=items[start : start + 50])
    first.close()
    second = App(memory_settings(database_url=postgres_url))
    found = 0
    async with second.running(), mcp_client(second, agent="coder") as client:
        for query, answer in QUERIES.items():
            hits = (await call(client, "memory_search", namespace="shared", query=query, top_k=5))["hits"]
            found += answer in [h["key"] for h in hits]
    second.close()
    assert found / len(QUERIES) >= 0.9
