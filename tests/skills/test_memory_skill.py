"""The memory skill through MCP, on the real embedder and a real SQLite store: agents and
tenants, replace by key, batches all or none, expiry, confirmation, restarts, limits."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import create_tenant, update_tenant
from scheduler.models import Lease, LedgerEntry, utcnow
from skills.memory import memories
from skills.memory.rows import Memory, MemoryNamespace
from tests.mcp_helpers import call, call_error, mcp_client
from tests.polling import until
from tests.runtime.test_confirm import answering
from tests.skills.conftest import memory_settings

pytestmark = [pytest.mark.anyio, pytest.mark.model]

FACTS = [
    "Production deploys happen on Tuesdays only.",
    "The billing service is written in Go.",
    "The user prefers a dark colour scheme in every editor.",
]


def namespace_state(app: App) -> str:
    with app.store.transaction() as session:
        return str(session.scalar(select(MemoryNamespace.state)))


def memories_in_store(app: App) -> int:
    with app.store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Memory)) or 0)


async def test_two_agents_share_by_meaning_and_another_tenant_sees_nothing(memory_app: App) -> None:
    create_tenant(memory_app.store, "rival")
    async with (
        mcp_client(memory_app, agent="planner") as planner,
        mcp_client(memory_app, agent="coder") as coder,
        mcp_client(memory_app, tenant="rival", agent="planner") as rival,
    ):
        shared = await call(planner, "memory_put_batch", namespace="shared", items=[{"text": t} for t in FACTS])
        own = await call(planner, "memory_put", text="Ask about the staging database before migrating.")
        assert own["namespace"] == "planner" and shared["namespace"] == "shared"

        found = await call(coder, "memory_search", namespace="shared", query="which day can we ship to prod?")
        assert found["hits"][0]["text"] == FACTS[0] and "meaning" in found["hits"][0]["matched"]
        assert (await call(coder, "memory_search", query="staging database"))["hits"] == []  # coder's own
        asked = await call(coder, "memory_search", namespace="planner", query="staging database")
        assert [h["memory_id"] for h in asked["hits"]] == [own["memory_id"]]

        one = shared["memories"][0]["memory_id"]
        assert (await call(rival, "memory_search", namespace="shared", query="deploy day"))["hits"] == []
        assert (await call(rival, "memory_list", namespace="shared"))["memories"] == []
        assert (await call(rival, "memory_namespaces"))["namespaces"] == []
        missing = await call_error(rival, "memory_get", memory_id=one)
        assert missing == (await call_error(rival, "memory_get", memory_id="mem_0000000000000000")).replace(
            "mem_0000000000000000", one
        )
        assert (await call(rival, "memory_delete", memory_id=one))["deleted"] == 0
        assert (await call(coder, "memory_get", memory_id=one))["text"] == FACTS[0]


async def test_a_put_with_the_same_key_replaces_and_a_batch_is_all_or_nothing(memory_app: App) -> None:
    async with mcp_client(memory_app, agent="planner") as client:
        first = await call(client, "memory_put", namespace="shared", key="deploy-day", text=FACTS[0])
        again = await call(
            client, "memory_put", namespace="shared", key="deploy-day", text="Deploys go out on Thursdays now."
        )
        assert again["memory_id"] == first["memory_id"] and again["replaced"] and not first["replaced"]
        got = await call(client, "memory_get", namespace="shared", key="deploy-day")
        assert got["text"] == "Deploys go out on Thursdays now."
        hits = (await call(client, "memory_search", namespace="shared", query="Tuesdays"))["hits"]
        assert [h["text"] for h in hits] == ["Deploys go out on Thursdays now."]

        before = memories_in_store(memory_app)
        too_long = await call_error(
            client, "memory_put_batch", namespace="shared", items=[{"text": FACTS[1]}, {"text": "word " * 900}]
        )
        assert "items[1]" in too_long and "split it" in too_long
        twice = await call_error(
            client, "memory_put_batch", items=[{"text": FACTS[1], "key": "k"}, {"text": FACTS[2], "key": "k"}]
        )
        assert "given twice" in twice
        update_tenant(memory_app.store, "local", max_live_memories=2)
        over = await call_error(client, "memory_put_batch", items=[{"text": t} for t in FACTS])
        assert "past your quota of 2" in over
        assert memories_in_store(memory_app) == before, "a refused batch stores nothing"
        page = (await call(client, "memory_list", namespace="shared"))["memories"]
        assert [m["key"] for m in page] == ["deploy-day"]


async def test_expired_memories_are_never_answered_and_are_purged(memory_app: App, monkeypatch: Any) -> None:
    """The memories' clock is moved past the TTL, not waited for: on a slow machine a
    real second can pass before the first search."""
    ahead = [timedelta(0)]
    monkeypatch.setattr(memories, "utcnow", lambda: utcnow() + ahead[0])
    async with mcp_client(memory_app, agent="planner") as client:
        kept = await call(client, "memory_put", text=FACTS[1])
        brief = await call(client, "memory_put", text=FACTS[0], key="soon", ttl_s=60)
        assert brief["expires_at"] is not None
        assert len((await call(client, "memory_search", query="when do we deploy?"))["hits"]) == 2
        ahead[0] = timedelta(seconds=61)
        hits = (await call(client, "memory_search", query="when do we deploy?"))["hits"]
        assert [h["memory_id"] for h in hits] == [kept["memory_id"]], "expired: never answered, purged or not"
        assert "no memory" in await call_error(client, "memory_get", memory_id=brief["memory_id"])
        await until(lambda: memories_in_store(memory_app) == 1, "the reaper purges the expired memory")
        assert [m["memory_id"] for m in (await call(client, "memory_list"))["memories"]] == [kept["memory_id"]]
        spaces = (await call(client, "memory_namespaces"))["namespaces"]
        assert [(n["namespace"], n["memories"]) for n in spaces] == [("planner", 1)]


async def test_a_namespace_is_deleted_only_once_confirmed(settings: Settings) -> None:
    app = App(memory_settings(auto_confirm=False))
    declines, accepts = answering("decline", False), answering("accept", True)
    async with (
        app.running(),
        mcp_client(app, agent="planner", elicitation_callback=declines) as wary,
        mcp_client(app, agent="planner", elicitation_callback=accepts) as sure,
    ):
        put = await call(sure, "memory_put_batch", namespace="scratch", items=[{"text": t} for t in FACTS])
        assert (await call(wary, "memory_delete", memory_id=put["memories"][0]["memory_id"]))["deleted"] == 1
        assert not declines.questions, "deleting one memory asks nothing"
        refused = await call_error(wary, "memory_delete", namespace="scratch")
        assert "was not confirmed" in refused and "namespace=scratch" in declines.questions[0]
        assert len((await call(sure, "memory_list", namespace="scratch"))["memories"]) == 2
        gone = await call(sure, "memory_delete", namespace="scratch")
        assert gone == gone | {"deleted": 2, "namespace": "scratch"}
        assert (await call(sure, "memory_namespaces"))["namespaces"] == []
    with app.store.transaction() as session:
        lease = session.scalars(select(Lease).where(Lease.kind == "memory")).one()
    assert lease.end_reason == "deleted" and lease.agent == "planner"
    app.close()


async def test_memories_survive_a_restart(settings: Settings) -> None:
    first = App(memory_settings())
    async with first.running(), mcp_client(first, agent="planner") as client:
        put = await call(client, "memory_put", namespace="shared", text=FACTS[2], metadata={"kind": "preference"})
    first.close()
    second = App(memory_settings())
    async with second.running(), mcp_client(second, agent="coder") as client:
        hits = await call(
            client, "memory_search", namespace="shared", query="what editor colours?", filter={"kind": "preference"}
        )
        assert [h["memory_id"] for h in hits["hits"]] == [put["memory_id"]]
        assert (await call(client, "memory_get", memory_id=put["memory_id"]))["metadata"] == {"kind": "preference"}
    second.close()


async def test_fees_tokens_and_storage_are_billed_and_a_stopped_namespace_still_reads(settings: Settings) -> None:
    # Storage dear enough that a 1 s lease of 1 MiB holds 1000 micro-units (at the real price it rounds to 0).
    prices = settings.home / "prices.toml"
    real = (Path(__file__).parents[2] / "scheduler" / "prices.toml").read_text()
    prices.write_text(
        real.replace("[resources.memory]\nstorage_gib_hour = 1000", "[resources.memory]\nstorage_gib_hour = 3686400000")
    )
    app = App(memory_settings(lease_s=1.0, prices_file=prices))
    async with app.running(), mcp_client(app, agent="planner") as client:
        put = await call(client, "memory_put", namespace="shared", text=FACTS[0])
        found = await call(client, "memory_search", namespace="shared", query="deploy")
        with app.store.transaction() as session:
            items = {
                (e.task_id, e.item): e.quantity
                for e in session.scalars(select(LedgerEntry).where(LedgerEntry.skill == "memory"))
            }
            lease = session.get(Lease, session.scalar(select(Lease.id).where(Lease.kind == "memory")))
            assert lease is not None and lease.agent == "planner" and lease.rate == {"memory.storage_mib_ms": 1000}
            assert lease.held_micros == 1000
        assert items[(put["task_id"], "task_fee")] == 1 and items[(found["task_id"], "task_fee")] == 1
        assert items[(put["task_id"], "tokens.input:all-minilm-l6-v2")] > 5

        # The budget runs out: the next renewal stops the namespace; reads go on, writes are refused.
        balance = await call(client, "billing_balance")
        update_tenant(app.store, "local", budget_micros=balance["spent"]["micros"] + balance["held"]["micros"])
        await until(lambda: namespace_state(app) == "stopped", "the renewal stops the namespace")
        assert (await call(client, "memory_get", memory_id=put["memory_id"]))["text"] == FACTS[0]
        assert (await call(client, "memory_search", namespace="shared", query="deploy"))["hits"]
        refused = await call_error(client, "memory_put", namespace="shared", text=FACTS[1])
        assert "budget" in refused
        update_tenant(app.store, "local", budget_micros=10_000_000)
        await call(client, "memory_put", namespace="shared", text=FACTS[1])
        assert (await call(client, "memory_namespaces"))["namespaces"][0]["state"] == "live"
    app.close()


async def test_namespaces_quota_pages_filters_and_scores(memory_app: App) -> None:
    update_tenant(memory_app.store, "local", max_live_memory_namespaces=1)
    async with mcp_client(memory_app, agent="planner") as client:
        items = [{"text": t, "metadata": {"n": i, "even": i % 2 == 0}} for i, t in enumerate(FACTS)]
        await call(client, "memory_put_batch", items=items)
        assert "your quota's most" in await call_error(client, "memory_put", namespace="other", text=FACTS[0])
        first = await call(client, "memory_list", limit=2)
        rest = await call(client, "memory_list", limit=2, cursor=first["next_cursor"])
        assert [m["text"] for m in first["memories"] + rest["memories"]] == FACTS and rest["next_cursor"] is None
        odd = await call(client, "memory_search", query="programming language", filter={"even": False})
        assert [h["metadata"]["n"] for h in odd["hits"]] == [1]
        strict = await call(client, "memory_search", query="programming language", min_score=0.99)
        assert strict["hits"] == []
        scores = [h["score"] for h in (await call(client, "memory_search", query="Go service"))["hits"]]
        assert scores and all(-1 <= s <= 1 for s in scores)


async def test_the_embedder_is_an_inference_model_and_embed_uses_it(memory_app: App) -> None:
    async with mcp_client(memory_app) as client:
        listed = {m["name"]: m for m in (await call(client, "inference_models"))["models"]}
        embedder = listed["all-minilm-l6-v2"]
        assert embedder["engine"] == "onnx" and embedder["embeddings"] and embedder["available"]
        assert embedder["prices"]["input_per_mtok"]["micros"] == 10_000
        out = await call(client, "inference_embed", input=["a cat", "a dog"])
        assert out["model"] == "all-minilm-l6-v2" and out["dimensions"] == 384 and out["prompt_tokens"] == 8
        wrong = await call_error(
            client,
            "inference_generate",
            model="all-minilm-l6-v2",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
        )
        assert "makes embeddings only" in wrong
    with memory_app.store.transaction() as session:
        billed = session.scalar(
            select(LedgerEntry.quantity).where(
                LedgerEntry.task_id == out["task_id"], LedgerEntry.item == "tokens.input:all-minilm-l6-v2"
            )
        )
    assert billed == 8
