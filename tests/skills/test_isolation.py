"""Tenant isolation for every op of every skill that exists.

For each tool: a call by an intruder that names the owner's resource gets exactly
the answer a made-up id gets; a call that names nothing never shows the owner's
resources. New ops are covered as they are added (give their required
arguments a harmless value in HARMLESS below if the test asks for one).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.app import App
from runtime.tenants import ensure_tenant
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

HARMLESS: dict[str, Any] = {
    "command": "true",
    "code": "print(1)",
    "path": "x.txt",
    "content": "x",
    "sql": "SELECT 1",
    "table": "t",
    "snapshot_id": "snap_ffffffffffffffff",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
    "input": ["x"],
    "channel": "jobs",
    "body": {"n": 1},
    "receipts": ["rc_ffffffffffffffff"],
    "text": "x",
    "query": "x",
    "items": [{"text": "x"}],
    "process_id": "proc_1",
    "name": "x",
    "port": 8000,
}
ID_FIELDS = ("sandbox_id", "task_id", "db_id", "vm_id", "workspace_id")
MADE_UP = {
    "sandbox_id": "sb_ffffffffffffffff",
    "task_id": "t_ffffffffffffffff",
    "db_id": "db_ffffffffffffffff",
    "vm_id": "vm_ffffffffffffffff",
    "workspace_id": "ws_ffffffffffffffff",
}


def arguments(schema: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name in schema.get("required", []):
        if name in ID_FIELDS:
            args[name] = ids[name]
        elif name in HARMLESS:
            args[name] = HARMLESS[name]
        else:
            pytest.fail(f"give the required argument {name!r} a harmless value in HARMLESS")
    return args


async def answer(client: Any, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        return True, result.content[0].text
    return False, json.dumps(result.structured_content)


async def test_no_tool_lets_one_tenant_reach_anothers_resources(app: App) -> None:
    ensure_tenant(app.store, "intruder")
    async with mcp_client(app) as owner, mcp_client(app, "intruder") as intruder:
        sandbox = await call(owner, "sandbox_create")
        database = await call(owner, "db_create", name="owned")
        vm = await call(owner, "vm_create")
        workspace = await call(owner, "workspace_create", name="owned", size_mib=32)
        owned = {
            "sandbox_id": sandbox["sandbox_id"],
            "task_id": sandbox["task_id"],
            "db_id": database["db_id"],
            "vm_id": vm["vm_id"],
            "workspace_id": workspace["workspace_id"],
        }
        # Tools that name nothing go first: later, the intruder's own task records
        # echo the owner's ids back to it, which is its own input, not a leak.
        tools = sorted(
            (await intruder.list_tools()).tools,
            key=lambda t: any(f in t.input_schema.get("properties", {}) for f in ID_FIELDS),
        )
        checked = []
        for tool in tools:
            takes_id = [f for f in ID_FIELDS if f in tool.input_schema.get("properties", {})]
            if takes_id:
                err_theirs, theirs = await answer(intruder, tool.name, arguments(tool.input_schema, owned))
                err_made_up, made_up = await answer(intruder, tool.name, arguments(tool.input_schema, MADE_UP))
                for field in takes_id:
                    theirs = theirs.replace(owned[field], "ID")
                    made_up = made_up.replace(MADE_UP[field], "ID")
                assert err_theirs and err_made_up, f"{tool.name} answered the intruder: {theirs}"
                assert theirs == made_up, f"{tool.name} tells another tenant's id from a made-up one"
            else:
                _, listed = await answer(intruder, tool.name, arguments(tool.input_schema, MADE_UP))
                for value in owned.values():
                    assert value not in listed, f"{tool.name} showed the intruder {value}"
            checked.append(tool.name)
        still = await call(owner, "sandbox_exec", sandbox_id=owned["sandbox_id"], command="echo alive")
        still_db = await call(owner, "db_query", db_id=owned["db_id"], sql="SELECT 'alive'")
        still_vm = await call(owner, "vm_exec", vm_id=owned["vm_id"], command="echo alive")
        await call(owner, "vm_delete", vm_id=owned["vm_id"])
        await call(owner, "sandbox_destroy", sandbox_id=owned["sandbox_id"])
        await call(owner, "db_delete", db_id=owned["db_id"])
        still_ws = await call(owner, "workspace_list_files", workspace_id=owned["workspace_id"])
        await call(owner, "workspace_delete", workspace_id=owned["workspace_id"])
        for own in (await call(intruder, "sandbox_list"))["sandboxes"]:  # what sandbox_create made for it
            await call(intruder, "sandbox_destroy", sandbox_id=own["sandbox_id"])
        for own in (await call(intruder, "db_list"))["databases"]:  # and db_create
            await call(intruder, "db_delete", db_id=own["db_id"])
        for own in (await call(intruder, "vm_list"))["vms"]:  # and vm_create
            await call(intruder, "vm_delete", vm_id=own["vm_id"])
        for own in (await call(intruder, "workspace_list"))["workspaces"]:  # and workspace_create
            await call(intruder, "workspace_delete", workspace_id=own["workspace_id"])
    assert still["stdout"] == "alive\n" and still_db["rows"] == [["alive"]] and still_vm["stdout"] == "alive\n"
    assert still_ws["entries"] == []
    assert len(checked) == len(tools) and {
        "sandbox_exec",
        "tasks_get",
        "billing_usage",
        "db_delete",
        "vm_delete",
    } <= set(checked)
