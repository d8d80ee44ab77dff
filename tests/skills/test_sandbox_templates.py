"""Sandbox templates on real Docker: python-data and node, the catalog, and custom templates
built here from a Debian and a PyPI package, cached by recipe and private to their tenant."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from runtime.app import App
from runtime.tenants import ensure_tenant
from sandbox.custom_images import CustomRecipe, image_size, remove
from sandbox.docker import DockerDriver
from scheduler.models import LedgerEntry
from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

PNG = b"\x89PNG\r\n\x1a\n"
# One Debian and one PyPI package, neither in the python template's image.
RECIPE = {"base": "python", "debian_packages": ["python3-yaml"], "pypi_packages": ["tabulate"]}


@pytest.fixture
def custom_images(docker_driver: DockerDriver) -> Iterator[None]:
    """The test's custom images are removed afterwards, whatever happened (both layers)."""
    yield
    remove(docker_driver, CustomRecipe.of("sandbox", ["python3-yaml"], ["tabulate"]))


async def test_python_data_draws_a_chart_with_pandas_and_matplotlib(app: App) -> None:
    code = (
        "import pandas as pd, matplotlib, matplotlib.pyplot as plt, scipy, sklearn, PIL, os\n"
        "frame = pd.DataFrame({'x': [1, 2, 3], 'y': [2, 4, 9]})\n"
        "frame.plot(x='x', y='y')\n"
        "plt.savefig('/work/chart.png')\n"
        "print(matplotlib.get_backend(), os.environ['MPLCONFIGDIR'], frame['y'].sum())\n"
    )
    async with mcp_client(app) as client:
        out = await call(client, "sandbox_run", template="python-data", code=code, outputs=["chart.png"])
    assert out["exit_code"] == 0, out["stderr"]
    assert out["stdout"].split() == ["agg", "/tmp/matplotlib", "15"]
    assert base64.b64decode(out["files"][0]["content"]).startswith(PNG)


async def test_node_runs_javascript(app: App) -> None:
    async with mcp_client(app) as client:
        out = await call(
            client, "sandbox_run", template="node", command="node -e 'console.log(6 * 7)' && npm --version"
        )
    assert out["exit_code"] == 0, out["stderr"]
    assert out["stdout"].splitlines()[0] == "42"


async def test_templates_lists_every_template_with_its_packages_size_limits_and_warmth(app: App) -> None:
    async with mcp_client(app) as client:
        listed = await call(client, "sandbox_templates")
    by_name = {t["name"]: t for t in listed["templates"]}
    assert {"python", "bash", "dev", "python-data", "node", "python-gvisor"} <= set(by_name)
    data = by_name["python-data"]
    assert data["built"] and data["image_mib"] > 100 and "python3-pandas" in data["debian_packages"]
    assert data["memory_mib"] == 1024 and data["language"] == "python" and not data["custom"]
    assert by_name["node"]["built"] and "nodejs" in by_name["node"]["debian_packages"]
    # The defaults of sandbox_run and sandbox_create share the warm pool until others are used.
    assert by_name["python"]["warm"] >= 1 and by_name["dev"]["warm"] >= 1
    assert by_name["python-gvisor"]["runtime"] == "runsc"


async def test_a_custom_template_builds_once_imports_and_stays_private(
    app: App, docker_driver: DockerDriver, custom_images: None
) -> None:
    ensure_tenant(app.store, "other")
    steps: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(message or "")

    async with mcp_client(app) as owner, mcp_client(app, "other") as other:
        first = await owner.call_tool(
            "sandbox_template_create", {"name": "tables", **RECIPE}, progress_callback=on_progress
        )
        assert not first.is_error, first.content
        made: dict[str, Any] = dict(first.structured_content or {})
        ran = await call(
            owner,
            "sandbox_run",
            template="tables",
            code="import yaml, tabulate; print(tabulate.tabulate([[yaml.safe_load('a: 1')['a']]]))",
        )
        session = await call(owner, "sandbox_create", template="tables")
        in_session = await call(
            owner, "sandbox_run_code", sandbox_id=session["sandbox_id"], code="import tabulate; print('ok')"
        )
        await call(owner, "sandbox_destroy", sandbox_id=session["sandbox_id"])
        # The same recipe, another tenant and name, other package order: no build, the same image.
        begun = time.monotonic()
        again = await call(
            other,
            "sandbox_template_create",
            name="mine",
            base="python",
            pypi_packages=["tabulate"],
            debian_packages=["python3-yaml"],
        )
        again_s = time.monotonic() - begun
        theirs = {t["name"] for t in (await call(other, "sandbox_templates"))["templates"] if t["custom"]}
        unseen = await call_error(other, "sandbox_run", template="tables", code="print(1)")
        not_theirs = await call(other, "sandbox_template_delete", name="tables")
        ours = {t["name"]: t for t in (await call(owner, "sandbox_templates"))["templates"]}
        await call(other, "sandbox_template_delete", name="mine")
        still = await call(owner, "sandbox_run", template="tables", code="import tabulate; print('still')")
        deleted = await call(owner, "sandbox_template_delete", name="tables")
        gone = await call_error(owner, "sandbox_run", template="tables", code="print(1)")
    assert made["cached"] is False and made["build_s"] > 0 and made["custom"] and made["base"] == "python"
    assert made["debian_packages"] == ["python3-yaml"] and made["pypi_packages"] == ["tabulate"]
    assert len(steps) >= 3 and steps[-1].startswith("tables is ready")
    assert ran["exit_code"] == 0, ran["stderr"]
    assert "1" in ran["stdout"] and in_session["stdout"] == "ok\n"
    assert again["cached"] is True and again["build_s"] == 0 and again_s < 10
    assert theirs == {"mine"}
    assert "unknown template 'tables'" in unseen and "sandbox_templates" in unseen
    assert not_theirs["deleted"] is False
    assert ours["tables"]["custom"] and ours["tables"]["image_mib"] > 0 and "mine" not in ours
    assert still["stdout"] == "still\n" and deleted["deleted"] is True
    assert "unknown template" in gone
    # The last template of the recipe gone, its image went with it.
    assert image_size(docker_driver, CustomRecipe.of("sandbox", ["python3-yaml"], ["tabulate"]).tag) is None
    with app.store.transaction() as session_:
        items = {e.item for e in session_.scalars(select(LedgerEntry).where(LedgerEntry.op == "template_create"))}
    assert "template_build.vcpu_ms" in items


async def test_a_failed_build_names_the_package_and_why(app: App) -> None:
    async with mcp_client(app) as client:
        debian = await call_error(
            client, "sandbox_template_create", name="broken", debian_packages=["no-such-package-zz"]
        )
        pypi = await call_error(client, "sandbox_template_create", name="broken", pypi_packages=["no-such-package-zz"])
        bad_name = await call_error(client, "sandbox_template_create", name="python", pypi_packages=["tabulate"])
        nothing = await call_error(client, "sandbox_template_create", name="empty")
        listed = await call(client, "sandbox_templates")
    assert "no package named 'no-such-package-zz'" in debian and "debian_packages" in debian
    assert "'no-such-package-zz'" in pypi and "pypi_packages" in pypi
    assert "built-in" in bad_name and "at least one package" in nothing
    assert not [t for t in listed["templates"] if t["custom"]]
