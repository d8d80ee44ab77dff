"""Quotas at admission, on a real SQLite store (no Docker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidInput, QuotaExceeded
from runtime.tenants import ensure_tenant, update_tenant
from scheduler import ledger
from scheduler.pricing import PriceCatalog, Usage
from scheduler.store import Store
from scheduler.tasks import OpBinding, Scheduler, TaskContext

MODEL = "smollm2-135m-instruct"


async def noop(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    return {}


NOOP = OpBinding("t", "noop", noop)
GENERATE = OpBinding("t", "generate", noop, worst_case=lambda a: Usage.tokens(MODEL, input=100, output=a["max_tokens"]))


def test_concurrent_tasks_are_capped(store: Store) -> None:
    update_tenant(store, "acme", max_concurrent_tasks=3)
    scheduler = Scheduler(store, PriceCatalog.load())
    for _ in range(3):
        scheduler.submit("acme", NOOP, {})
    with pytest.raises(QuotaExceeded, match=r"3 tasks queued or running.*tasks_list"):
        scheduler.submit("acme", NOOP, {})


def test_tasks_per_minute_says_when_to_retry(store: Store) -> None:
    update_tenant(store, "acme", tasks_per_minute=2)
    scheduler = Scheduler(store, PriceCatalog.load())
    for _ in range(2):
        task_id = scheduler.submit("acme", NOOP, {})
        scheduler._finish(task_id, "succeeded", {}, None, Usage())
    with pytest.raises(QuotaExceeded, match=r"2 tasks this minute.*retry in \d+ s"):
        scheduler.submit("acme", NOOP, {})


def test_tokens_per_minute_counts_what_was_used_and_what_is_asked(store: Store) -> None:
    update_tenant(store, "acme", tokens_per_minute=1000)
    catalog = PriceCatalog.load()
    scheduler = Scheduler(store, catalog)
    with store.transaction() as session:  # 700 tokens already used this minute
        posting = ledger.Posting("task:earlier", "acme", None, "inference", "generate")
        ledger.post(session, catalog, posting, catalog.usage_charges(Usage.tokens(MODEL, input=200, output=500)))
    scheduler.submit("acme", GENERATE, {"max_tokens": 200})  # 700 + 300 fits
    with pytest.raises(QuotaExceeded, match=r"may use 400 tokens.*lower max_tokens"):
        scheduler.submit("acme", GENERATE, {"max_tokens": 300})


def test_a_call_over_the_whole_tokens_per_minute_is_refused_as_bad_input_not_as_retry_later(store: Store) -> None:
    """A 429 would have OpenAI clients retry a call that can never fit."""
    update_tenant(store, "acme", tokens_per_minute=1000)
    scheduler = Scheduler(store, PriceCatalog.load())
    with pytest.raises(
        InvalidInput, match=r"may use 1100 tokens \(a bound .*\), more than your whole quota.*lower max_tokens"
    ):
        scheduler.submit("acme", GENERATE, {"max_tokens": 1000})
    scheduler.submit("acme", GENERATE, {"max_tokens": 900})  # one that fits the quota is taken


def test_one_tenants_quota_does_not_touch_another(store: Store) -> None:
    ensure_tenant(store, "other")
    update_tenant(store, "acme", max_concurrent_tasks=1)
    scheduler = Scheduler(store, PriceCatalog.load())
    scheduler.submit("acme", NOOP, {})
    with pytest.raises(QuotaExceeded):
        scheduler.submit("acme", NOOP, {})
    scheduler.submit("other", NOOP, {})
