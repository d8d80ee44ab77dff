"""Destructive ops ask the client to confirm first, at both protocol versions; a client that
cannot answer is told which setting lets unattended agents go ahead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp_types import ElicitResult

from runtime.app import App
from runtime.settings import Settings, load_settings
from tests.mcp_helpers import PollingTasks, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio]


@pytest.fixture
async def asking_app(settings: Settings) -> AsyncIterator[App]:
    application = App(load_settings(pool_size=0, reap_interval_s=0.2, auto_confirm=False))
    async with application.running():
        yield application
    application.close()


def answering(action: str, confirm: bool) -> Any:
    questions: list[str] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action=action, content={"confirm": confirm} if action == "accept" else None)

    elicit.questions = questions  # type: ignore[attr-defined]
    return elicit


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_a_delete_goes_ahead_only_once_confirmed(asking_app: App, mode: str) -> None:
    declines = answering("decline", False)
    accepts = answering("accept", True)
    async with (
        mcp_client(asking_app, mode=mode, elicitation_callback=declines) as wary,
        mcp_client(asking_app, mode=mode, elicitation_callback=accepts) as sure,
    ):
        db = (await call(sure, "db_create", name="keep"))["db_id"]
        refused = await call_error(wary, "db_delete", db_id=db)
        assert "was not confirmed, so nothing was changed" in refused
        assert [d["db_id"] for d in (await call(sure, "db_list"))["databases"]] == [db]
        assert declines.questions and db in declines.questions[0]

        deleted = await call(sure, "db_delete", db_id=db)
        assert deleted["deleted"] is True and (await call(sure, "db_list"))["databases"] == []


async def test_a_client_that_cannot_answer_is_told_about_auto_confirm(asking_app: App) -> None:
    async with mcp_client(asking_app) as mute:
        db = (await call(mute, "db_create"))["db_id"]
        message = await call_error(mute, "db_delete", db_id=db)
        assert "auto_confirm = true" in message and "CLOUDSKILLS_AUTO_CONFIRM" in message
        assert [d["db_id"] for d in (await call(mute, "db_list"))["databases"]] == [db]
    asking_app.settings.auto_confirm = True  # an unattended agent's server
    async with mcp_client(asking_app) as mute:
        assert (await call(mute, "db_delete", db_id=db))["deleted"] is True


async def test_a_client_taking_task_handles_is_asked_too(asking_app: App) -> None:
    """db_restore can run long, so a tasks client could get a handle: it is asked first all the same."""
    declines = answering("decline", False)
    async with mcp_client(asking_app, extensions=[PollingTasks()], elicitation_callback=declines) as client:
        db = (await call(client, "db_create"))["db_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE kept (x)")
        snapshot = (await call(client, "db_backup", db_id=db))["snapshot_id"]
        await call(client, "db_query", db_id=db, sql="CREATE TABLE later (x)")
        refused = await call_error(client, "db_restore", db_id=db, snapshot_id=snapshot)
        assert "was not confirmed" in refused and declines.questions
        tables = [t["name"] for t in (await call(client, "db_schema", db_id=db))["tables"]]
        assert tables == ["kept", "later"], "nothing was restored"
    asking_app.settings.auto_confirm = True
    async with mcp_client(asking_app) as client:
        await call(client, "db_delete", db_id=db)
