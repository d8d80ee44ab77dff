"""hypothesis drives every tool's input schema through the MCP client, valid inputs and
garbage alike: no unhandled exception, every error a tool error with a message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.types import Tool

from runtime.app import App
from runtime.settings import Settings
from runtime.tenants import update_tenant
from sandbox.docker import DockerDriver
from tests.mcp_helpers import mcp_client

pytestmark = pytest.mark.docker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
garbage = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


def from_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values shaped by a pydantic JSON schema: mostly near-valid, bounds loosely kept, so
    both the happy path and the validators' edges get exercised."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].split("/")[-1]], defs)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 60))
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**40)) - 1, max_value=schema.get("maximum", 2**40) + 1)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1e6))
        return st.floats(min_value=low - 1, max_value=schema.get("maximum", 1e6) + 1, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=3)
    if kind == "object":
        properties = schema.get("properties", {})
        if not properties:
            return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in properties.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in properties.items() if k not in required},
        )
    return json_values


class Served:
    def __init__(self, portal: BlockingPortal, client: Client, tools: dict[str, Tool]) -> None:
        self.portal = portal
        self.client = client
        self.tools = tools


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, docker_driver: DockerDriver) -> Iterator[Served]:
    settings_ = Settings(home=tmp_path_factory.mktemp("fuzz"), pool_size=1, reap_interval_s=0.5, auto_confirm=True)
    settings_.home.mkdir(parents=True, exist_ok=True)
    app = App(settings_, docker_driver)
    # Small quotas: valid sandbox_create calls then hit a clear quota error, not the host's limits.
    update_tenant(
        app.store,
        "local",
        max_live_sandboxes=3,
        max_live_databases=2,
        max_live_vms=1,
        # No custom templates: a valid sandbox_template_create is refused before it builds anything.
        max_live_sandbox_templates=0,
        max_live_workspaces=2,
        tasks_per_minute=100_000,
        # A valid inference_generate may ask for thousands of tokens: a quota bounds the model's work.
        tokens_per_minute=3_000,
    )
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.running()),
        portal.wrap_async_context_manager(mcp_client(app)) as client,
    ):
        tools = {t.name: t for t in portal.call(client.list_tools).tools}
        yield Served(portal, client, tools)
        listed = portal.call(client.call_tool, "sandbox_list", {})
        for sandbox in (listed.structured_content or {}).get("sandboxes", []):
            portal.call(client.call_tool, "sandbox_destroy", {"sandbox_id": sandbox["sandbox_id"]})
        databases = portal.call(client.call_tool, "db_list", {})
        for database in (databases.structured_content or {}).get("databases", []):
            portal.call(client.call_tool, "db_delete", {"db_id": database["db_id"]})
        vms = portal.call(client.call_tool, "vm_list", {})
        for vm in (vms.structured_content or {}).get("vms", []):
            portal.call(client.call_tool, "vm_delete", {"vm_id": vm["vm_id"]})
        workspaces = portal.call(client.call_tool, "workspace_list", {})
        for workspace in (workspaces.structured_content or {}).get("workspaces", []):
            portal.call(client.call_tool, "workspace_delete", {"workspace_id": workspace["workspace_id"]})
    app.close()


TOOLS = [
    "sandbox_run",
    "sandbox_create",
    "sandbox_exec",
    "sandbox_run_code",
    "sandbox_write_file",
    "sandbox_read_file",
    "sandbox_list_files",
    "sandbox_list",
    "sandbox_destroy",
    "sandbox_process_list",
    "sandbox_process_output",
    "sandbox_process_kill",
    "sandbox_expose",
    "sandbox_describe",
    "sandbox_pause",
    "sandbox_resume",
    "sandbox_templates",
    "sandbox_template_create",
    "sandbox_template_delete",
    "billing_usage",
    "billing_balance",
    "billing_invoice",
    "tasks_list",
    "tasks_get",
    "tasks_cancel",
    "db_create",
    "db_list",
    "db_describe",
    "db_query",
    "db_schema",
    "db_export",
    "db_import",
    "db_backup",
    "db_restore",
    "db_delete",
    "vm_create",
    "vm_list",
    "vm_describe",
    "vm_exec",
    "vm_write_file",
    "vm_read_file",
    "vm_stop",
    "vm_start",
    "vm_reboot",
    "vm_snapshot",
    "vm_restore",
    "vm_delete",
    "inference_models",
    "inference_generate",
    "inference_embed",
    "memory_put",
    "memory_put_batch",
    "memory_search",
    "memory_get",
    "memory_list",
    "memory_namespaces",
    "memory_delete",
    "channel_create",
    "channel_send",
    "channel_ack",
    "channel_list",
    "channel_describe",
    "channel_delete",
    "workspace_create",
    "workspace_list",
    "workspace_describe",
    "workspace_write_file",
    "workspace_read_file",
    "workspace_list_files",
    "workspace_snapshot",
    "workspace_restore",
    "workspace_delete_snapshot",
    "workspace_delete",
]
# Not fuzzed: a receive may wait up to 30 s on an empty channel, per example; its
# bad input is covered in tests/skills/test_channel_skill.py.
WAITING = ["channel_receive"]


def check(served: Served, name: str, arguments: Any) -> None:
    result = served.portal.call(served.client.call_tool, name, arguments)
    if result.is_error:
        text = result.content[0].text
        assert text.strip(), f"{name}: an error without a message"
        assert "Traceback" not in text, f"{name}: a stack trace reached the agent"
        assert "internal error" not in text, f"{name} crashed on {arguments!r}: {text}"
    else:
        assert result.structured_content is not None


def test_every_tool_is_fuzzed(served: Served) -> None:
    assert set(TOOLS) | set(WAITING) == set(served.tools), "fuzz every tool: update TOOLS"


@pytest.mark.parametrize("name", TOOLS)
def test_tool_survives_valid_and_garbage_input(served: Served, name: str) -> None:
    schema = served.tools[name].input_schema
    # Fewer for the tools that start real sandboxes with every valid call.
    examples = (
        12
        if name in ("sandbox_run", "sandbox_create", "db_create", "vm_create", "inference_generate", "workspace_create")
        else 30
    )

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(arguments=from_schema(schema) | garbage)
    def fuzz(arguments: Any) -> None:
        check(served, name, arguments)

    fuzz()
