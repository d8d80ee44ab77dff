"""One call path: a tool call's arguments are validated once, on the ordinary path and
through the MCP tasks extension alike, and the answer carries the task's id and cost."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.app import App
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from skills.billing.models import UsageInput
from skills.db.models import DescribeOutput
from tests.mcp_helpers import PollingTasks, call, mcp_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def offline_app(settings: Settings) -> App:
    return App(settings, DockerDriver("unix:///nonexistent/docker.sock"))


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every validation of billing_usage's arguments."""
    seen: list[Any] = []
    original = UsageInput.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[UsageInput], /, obj: Any, **options: Any) -> UsageInput:
        seen.append(obj)
        result: UsageInput = original(cls, obj, **options)
        return result

    monkeypatch.setattr(UsageInput, "model_validate", classmethod(counting))
    return seen


@pytest.mark.parametrize("tasks", [False, True], ids=["ordinary", "tasks-extension"])
async def test_arguments_are_validated_once_per_call(offline_app: App, validations: list[Any], tasks: bool) -> None:
    options: dict[str, Any] = {"extensions": [PollingTasks()], "mode": "2026-07-28"} if tasks else {}
    async with offline_app.running(serving=False), mcp_client(offline_app, **options) as client:
        await call(client, "billing_usage", group_by=["skill"])
        assert validations == [{"group_by": ["skill"]}]
        await call(client, "billing_usage", group_by=["op"])
        assert len(validations) == 2


async def test_the_answer_carries_the_task_and_its_cost(offline_app: App) -> None:
    """Added by the call path, not declared by the op's output model."""
    async with offline_app.running(serving=False), mcp_client(offline_app) as client:
        created = await call(client, "db_create", engine="sqlite")
        task = await call(client, "tasks_get", task_id=created["task_id"])
        assert task["tool"] == "db_create" and task["state"] == "succeeded"
        assert created["cost"] == task["cost"] and created["cost"]["micros"] > 0
        # The task keeps the answer as details: its connection string is a secret.
        assert task["result"] == {**created, "connection_string": "[secret]"}
        assert "task_id" not in DescribeOutput.model_fields and "cost" not in DescribeOutput.model_fields
        listed = await call(client, "tasks_list")
        assert "cost" not in listed, "tasks_list reports on other tasks: it carries no envelope of its own"
        await call(client, "db_delete", db_id=created["db_id"])
