"""billing_usage, billing_balance and billing_invoice, from a ledger filled by real tasks."""

from __future__ import annotations

import csv
import sys

import anyio
import pytest

from runtime.app import App
from runtime.tenants import update_tenant
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_usage_groups_and_totals_match_the_tasks(app: App) -> None:
    async with mcp_client(app) as client:
        runs = [await call(client, "sandbox_run", code="print(1)") for _ in range(2)]
        by_op = await call(client, "billing_usage")
        by_day = await call(client, "billing_usage", group_by=["day"])
        by_model = await call(client, "billing_usage", group_by=["model"])
        future = await call(client, "billing_usage", since="2999-01-01T00:00:00Z")
        bad = await call_error(client, "billing_usage", group_by=["colour"])
    spent = sum(r["cost"]["micros"] for r in runs)
    assert by_op["total"]["micros"] == by_day["total"]["micros"] == by_model["total"]["micros"] == spent
    items = {(r["op"], r["item"]) for r in by_op["rows"]}
    assert {("run", "task_fee"), ("run", "sandbox.vcpu_ms"), ("run", "sandbox.mib_ms")} <= items
    assert [r["entries"] for r in by_op["rows"] if r["item"] == "task_fee" and r["op"] == "run"] == [2]
    assert len(by_day["rows"]) == 1 and by_day["rows"][0]["day"] and by_day["rows"][0]["skill"] is None
    assert by_model["rows"][0]["model"] is None  # sandboxes are not billed by model
    assert future["rows"] == [] and future["total"]["micros"] == 0
    assert by_op["catalog_versions"] == [app.catalog.version]
    assert "`group_by.0`" in bad


async def test_balance_shows_budget_left_and_the_alert(app: App) -> None:
    async with mcp_client(app) as client:
        before = await call(client, "billing_balance")
        update_tenant(app.store, "local", budget_micros=1_000_000, alert_micros=1)
        ran = await call(client, "sandbox_run", code="print(1)")
        after = await call(client, "billing_balance")
    assert before["budget"] is None and before["left"] is None and before["alert"] is False
    assert after["spent"]["micros"] == ran["cost"]["micros"]
    assert after["left"]["micros"] == 1_000_000 - ran["cost"]["micros"]
    assert after["held"]["micros"] == 0
    assert after["alert"] is True and after["alert_at"]["micros"] == 1


async def test_invoice_lines_sum_to_the_total_and_export_as_csv(app: App, tmp_path: object) -> None:
    async with mcp_client(app) as client:
        ran = await call(client, "sandbox_run", code="print(1)")
        invoice = await call(client, "billing_invoice")
        empty = await call(client, "billing_invoice", period="2001-02")
        bad = await call_error(client, "billing_invoice", period="2026-13")
    assert invoice["total"]["micros"] == ran["cost"]["micros"]
    assert sum(line["amount"]["micros"] for line in invoice["lines"]) == invoice["total"]["micros"]
    assert empty["lines"] == [] and empty["start"].startswith("2001-02-01") and empty["end"].startswith("2001-03-01")
    assert "`period`" in bad
    out = tmp_path / "invoice.csv"  # type: ignore[operator]
    cli = await anyio.run_process(
        [sys.executable, "-m", "runtime", "billing", "invoice", "--csv", str(out), "--json"],
        env={"CLOUDSKILLS_HOME": str(app.settings.home), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0][:2] == ["period", "skill"]
    assert rows[-1][4] == "total" and int(rows[-1][7]) == ran["cost"]["micros"]
