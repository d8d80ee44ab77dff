"""The process's wiring: settings → store → scheduler, sandboxes and skills.

Both the MCP server and the CLI run every op through ``App.call``, so a call
from either is the same durable, billed task.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from runtime.settings import Settings
from runtime.storage import open_store
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from sandbox.driver import SandboxDriver
from sandbox.images import sandbox_image
from sandbox.qemu import QemuDriver
from sandbox.vm_image import guest_image
from scheduler.errors import CloudSkillsError, InvalidInput, NotFound
from scheduler.pool import WarmPool
from scheduler.pricing import PriceCatalog
from scheduler.sandboxes import SandboxManager
from scheduler.tasks import Progress, Scheduler
from skills.base import Op, binding
from skills.db.engines.postgres import PostgresEngine
from skills.db.engines.sqlite import SqliteEngine
from skills.db.instances import DatabaseManager
from skills.inference.catalog import ModelCatalog, specs_from
from skills.registry import Registry, discover
from skills.services import Services
from skills.vm.instances import VmManager

log = logging.getLogger("cloudskills")


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence naming each bad argument, instead of pydantic's multi-line report."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "is not an argument of this tool"
        elif error["type"] == "missing":
            message = "is required"
        problems.append(f"`{where}` {message[0].lower()}{message[1:]}" if message else f"`{where}` is invalid")
    more = f" (and {len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return (
        f"invalid arguments: {'; '.join(problems)}{more}. Fix them and call again; the tool's inputSchema lists them."
    )


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (possibly nested) task-group wrappers, or the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class App:
    def __init__(self, settings: Settings, driver: SandboxDriver | None = None) -> None:
        self.settings = settings
        self.store = open_store(settings.db_url)
        self.catalog = PriceCatalog.load(settings.prices_file)
        self.driver = driver or DockerDriver(settings.docker_host)
        image = sandbox_image()
        self.pool = WarmPool(self.driver, self.store.store_id, image, settings.pool_size, settings.pool_memory_mib)
        self.sandboxes = SandboxManager(self.store, self.driver, self.catalog, image, self.pool)
        self.scheduler = Scheduler(self.store, self.catalog, concurrency=settings.workers)
        self.registry: Registry = discover()
        self.databases = DatabaseManager(
            self.store,
            self.catalog,
            {
                "sqlite": SqliteEngine(settings.home / "databases"),
                "postgres": PostgresEngine(DockerDriver(settings.docker_host), self.store.store_id),
            },
            settings.home / "snapshots",
            settings.meter_interval_s,
        )
        qemu = QemuDriver(guest_image(settings.image_cache), self.store.store_id, settings.home / "vms")
        self.vms = VmManager(self.store, self.catalog, qemu, settings.meter_interval_s)
        self.models = ModelCatalog(specs_from(settings.models))
        self.scheduler.services = Services(
            self.store, self.catalog, self.scheduler, self.sandboxes, self.databases, self.vms, self.models
        )
        for skill in self.registry.skills:
            for op in skill.ops:
                self.scheduler.bind(binding(skill.name, op))
        # Shown once by whoever starts the process; None once any tenant exists.
        self.first_key = bootstrap(self.store)

    @asynccontextmanager
    async def running(self, *, serving: bool = True) -> AsyncIterator[App]:
        """Run the workers while inside; a server (``serving``) also recovers what a
        previous process left, reaps, and keeps the warm pool full.

        On the way out the pool is drained and pending container removals finish."""
        try:
            async with anyio.create_task_group() as removals:
                self.sandboxes.background = removals
                try:
                    async with anyio.create_task_group() as group:
                        if serving:
                            failed = self.scheduler.recover()
                            if failed:
                                log.warning("failed %d task(s) a previous process left running", len(failed))
                            abandoned = await self.databases.recover()
                            abandoned += await self.vms.recover()
                            if abandoned:
                                log.warning("removed %d resource(s) a previous process left half-made", len(abandoned))
                            group.start_soon(self._reap_forever)
                            group.start_soon(self.pool.run)
                        group.start_soon(self.scheduler.serve)
                        try:
                            yield self
                        finally:
                            group.cancel_scope.cancel()
                finally:
                    self.sandboxes.background = None
                    with anyio.CancelScope(shield=True):
                        await self.models.close()
        except BaseExceptionGroup as group_error:
            # The background loops never raise; an error here is the body's own.
            raise sole_error(group_error) from None

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.sandboxes.reap()
                await self.databases.reap()
                await self.vms.reap()
                self.databases.meter()
                self.vms.meter()
            except CloudSkillsError as exc:
                log.warning("reaper: %s", exc)
            except Exception:
                # A background loop must never take the server down; the next pass retries.
                log.exception("reaper pass failed")
            await anyio.sleep(self.settings.reap_interval_s)

    def op(self, tool_name: str) -> tuple[str, Op[Any, Any]]:
        found = self.registry.find(tool_name)
        if found is None:
            raise NotFound(f"no tool {tool_name!r}: list the tools to see what exists.")
        skill, op = found
        return skill.name, op

    def arguments(self, tool_name: str, arguments: dict[str, Any]) -> tuple[str, Op[Any, Any], BaseModel]:
        """The tool's skill, op and validated arguments; a clear error for bad ones."""
        skill, op = self.op(tool_name)
        try:
            return skill, op, op.input.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from exc

    async def call(
        self, tenant_id: str, tool_name: str, arguments: dict[str, Any], progress: Progress | None = None
    ) -> BaseModel:
        """Validate, run as a task, and return the op's typed output (or raise its error)."""
        skill, op, args = self.arguments(tool_name, arguments)
        binding = self.scheduler.binding(f"{skill}.{op.name}")
        outcome = await self.scheduler.run(tenant_id, binding, args.model_dump(mode="json"), progress)
        result: BaseModel = op.output.model_validate(outcome.unwrap())
        return result

    async def call_or_hand_over(
        self, tenant_id: str, tool_name: str, arguments: dict[str, Any], within_s: float
    ) -> BaseModel | str | None:
        """For an op that can run long: run the call as a task, and answer like ``call`` if
        it ends within ``within_s``, else leave it running, unwaited, and return its task id.
        None for any other op: the caller takes the ordinary path."""
        skill, op, args = self.arguments(tool_name, arguments)
        if not op.runs_long(args):
            return None
        binding = self.scheduler.binding(f"{skill}.{op.name}")
        task_id = self.scheduler.submit(tenant_id, binding, args.model_dump(mode="json"))
        try:
            with anyio.move_on_after(within_s):
                outcome = await self.scheduler.wait(task_id)
                result: BaseModel = op.output.model_validate(outcome.unwrap())
                return result
        except anyio.get_cancelled_exc_class():
            # The caller went away before it had a handle: nobody could ever poll this task.
            with anyio.CancelScope(shield=True):
                await self.scheduler.cancel(tenant_id, task_id)
            raise
        self.scheduler.forget(task_id)
        return task_id

    def close(self) -> None:
        self.store.close()
