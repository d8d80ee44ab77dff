"""Shared fixtures. Docker tests use the real engine and fail (never skip) without one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import CloudSkillsError
from runtime.app import App
from runtime.settings import Settings, load_settings
from sandbox.docker import DockerDriver
from sandbox.driver import LABEL_SANDBOX, LABEL_STORE
from sandbox.images import ensure_images, stderr_progress
from sandbox.vm_image import ensure_guest_image
from skills.db.engines import postgres_image
from skills.db.instances import DatabaseManager
from skills.sandbox.manager import SandboxManager
from skills.vm.instances import VmManager
from skills.workspace.workspaces import WorkspaceManager

# What makes a test part of the real tiers; every other test is in the fast tier
# (`pytest -m fast`, run first by scripts/test), on in-memory drivers and SQLite.
# Tests that start real server or CLI processes (tests/e2e, the CLI's) are real too.
REAL_BACKENDS = ("docker", "model", "processes", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts or item.path.name == "test_cli.py":
            item.add_marker(pytest.mark.processes)
        if not any(item.get_closest_marker(name) for name in REAL_BACKENDS):
            item.add_marker(pytest.mark.fast)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CLOUDSKILLS_HOME", str(tmp_path / "home"))
    # A small warm pool: the pool path is exercised without starving 2 cores.
    # auto_confirm: destructive ops go ahead; tests/runtime/test_confirm.py asks instead.
    return load_settings(reap_interval_s=0.2, pool_size=2, auto_confirm=True)


@pytest.fixture(scope="session")
def docker_driver() -> DockerDriver:
    """The real engine with the sandbox and PostgreSQL images (and the VM guest) built; a missing
    engine fails the test."""
    driver = DockerDriver()
    try:
        driver.version()
        ensure_images(driver)
        postgres_image.ensure_image(driver, stderr_progress)
        ensure_guest_image(load_settings().image_cache, stderr_progress)
    except CloudSkillsError as exc:
        pytest.fail(f"Docker tests need a running Docker Engine: {exc.message}")
    return driver


def containers_of(driver: DockerDriver, app: App) -> list[str]:
    return [c.container_id for c in driver.list_labelled({LABEL_STORE: app.store.store_id})]


def sandboxes_in_use(app: App) -> list[str]:
    """The app's containers but the warm ones its pool holds."""
    found = app.docker.list_labelled({LABEL_STORE: app.store.store_id})
    pool = app.service(SandboxManager).pool
    return [c.container_id for c in found if pool is None or not pool.holds(c.labels.get(LABEL_SANDBOX, ""))]


async def clean_up(app: App, docker_driver: DockerDriver) -> tuple[list[str], list[str], list[str]]:
    """Remove what a test left of the app's (containers, databases, VMs), and say what it was."""
    leftovers = containers_of(docker_driver, app)
    for container_id in leftovers:
        docker_driver.destroy(container_id)
    databases = app.service(DatabaseManager).list_all_live()
    for database in databases:
        await app.service(DatabaseManager).delete(database)
    vms = [vm.id for vm in app.service(VmManager).list_live()]
    for vm in vms:
        await app.service(VmManager).delete(vm, "test_cleanup")
    return leftovers, databases, vms


async def remove_workspaces(app: App) -> list[str]:
    """Delete what workspaces a test left (after its containers: none mounts them any more),
    so no mount or loop device outlives it; their ids."""
    workspaces = app.service(WorkspaceManager)
    left = workspaces.list_all_live()
    for row in left:
        await workspaces.delete(row.tenant_id, row.id)
    return [row.id for row in left]


@pytest.fixture
async def app(settings: Settings, docker_driver: DockerDriver) -> AsyncIterator[App]:
    """A running app on a fresh store; after the test, none of its containers may be left."""
    application = App(settings, docker_driver)
    async with application.running():
        yield application
    leftovers, databases, vms = await clean_up(application, docker_driver)
    workspaces = await remove_workspaces(application)
    application.close()
    assert not leftovers, f"the test left {len(leftovers)} container(s) behind"
    assert not databases, f"the test left {len(databases)} database(s) behind"
    assert not vms, f"the test left {len(vms)} VM(s) behind"
    assert not workspaces, f"the test left {len(workspaces)} workspace(s) behind"


@pytest.fixture
def home(settings: Settings) -> Iterator[Path]:
    yield settings.home


# A real PostgreSQL with pgvector (the `pgserver` package's, run as a local process): the
# store's every skill migrates on it (memory, channels, replicas).
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One PostgreSQL 16 server with pgvector for the session; a database per test."""
    import pgserver

    folder = Path(tmp_path_factory.mktemp("pg"))
    server = pgserver.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    name = f"memory_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name};")
    return str(postgres_server.get_uri(name)).replace("postgresql://", "postgresql+psycopg://", 1)
