"""The process's wiring: settings → store → scheduler → the skills it discovers.

It names no resource kind: each skill that keeps resources past a call names
the factory of its manager (``Skill.resource``), and the process builds it,
recovers it after a restart, reaps and renews its leases (``ResourceDuties``),
and runs what it keeps doing while serving (``serve``: a warm pool).

One call path: the MCP server, the CLI and the MCP tasks extension all go
through ``App.prepare`` (the tool resolved and its arguments validated, once)
and the scheduler, which hands the typed arguments to the handler and stores
the op's output with the task's id and cost added.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from common.errors import InvalidInput, NotFound, sole_error
from runtime.settings import Settings
from runtime.storage import open_store
from runtime.telemetry import Telemetry
from runtime.tenants import bootstrap
from sandbox.docker import DockerDriver
from sandbox.engines import Engines
from scheduler.leases import Leases
from scheduler.places import settle_place
from scheduler.pricing import PriceCatalog
from scheduler.resources import Every, ResourceDuties, Services
from scheduler.routing import Router
from scheduler.tasks import OpBinding, Progress, Scheduler, TaskOutcome
from scheduler.workers import HEARTBEAT_S, Workers
from skills.base import Op, Platform, binding
from skills.registry import Registry, discover

log = logging.getLogger("cloudskills")

T = TypeVar("T")
# How often finished tasks past their retention lose their details.
PRUNE_EVERY_S = 60.0


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


@dataclass(frozen=True)
class PreparedCall:
    """A tool call resolved and its arguments validated: what the scheduler runs."""

    tool: str
    arguments: dict[str, Any]  # as the caller sent them
    op: Op[Any, Any]
    binding: OpBinding
    args: BaseModel


# A call already prepared earlier in this request (by the MCP tasks extension, before it
# hands an ordinary call on to the server's own path), so it is not validated twice.
PREPARED: ContextVar[PreparedCall | None] = ContextVar("cloudskills_prepared_call", default=None)


class App:
    def __init__(self, settings: Settings, docker: DockerDriver | None = None) -> None:
        self.settings = settings
        self.store = open_store(settings.db_url)
        self.catalog = PriceCatalog.load(settings.prices_file)
        # This data dir: where the resources this process makes live (scheduler/places.py).
        place = settle_place(self.store, settings.home)
        self.leases = Leases(self.store, self.catalog, settings.lease_s, place)
        self.services = Services()
        self.scheduler = Scheduler(self.store, self.catalog, self.services, concurrency=settings.workers)
        self.registry: Registry = discover()
        # Sandboxes on several engines where docker_hosts names them; the first is the default.
        self.engines = Engines.from_hosts(settings.docker_hosts) if settings.docker_hosts and not docker else None
        self.docker = docker or (self.engines.default.driver if self.engines else DockerDriver(settings.docker_host))
        # This process among the replicas sharing the store (scheduler/workers.py).
        self.workers = Workers(self.store, self.scheduler.worker_id, settings.worker_lapse_s, place)
        self.scheduler.place = place
        host_bound = frozenset(field for skill in self.registry.skills for field in skill.host_bound)
        self.router = self.scheduler.router = Router(self.scheduler, self.workers, self.leases, host_bound)
        for shared in (self.store, self.catalog, self.scheduler, self.leases, self.workers):
            self.services.add(shared)
        platform = Platform(
            self.store,
            self.catalog,
            self.scheduler,
            self.leases,
            self.services,
            settings.home,
            settings,
            self.docker,
            self.engines,
        )
        for skill in self.registry.skills:
            if skill.resource is not None:
                self.services.add(skill.resource(platform))
            for op in skill.ops:
                self.scheduler.bind(binding(skill.name, op))
        prune = Every(PRUNE_EVERY_S, lambda: self.scheduler.prune(settings.task_retention_s))
        self.duties = ResourceDuties(self.services.kinds(), self.leases, chores=[self._settle_dead_workers, prune])
        # Metrics of every task, traces when configured, the task on every log line (runtime/telemetry.py).
        self.telemetry = Telemetry.install(self)
        # Shown once by whoever starts the process; None once any tenant exists.
        self.first_key = bootstrap(self.store)

    def service(self, kind: type[T]) -> T:
        """A service of this process by its type: ``app.service(SandboxManager)``."""
        return self.services.get(kind)

    @asynccontextmanager
    async def running(self, *, serving: bool = True) -> AsyncIterator[App]:
        """Run the workers while inside; a server (``serving``) also recovers what a
        previous process left, runs every kind's duties (reaping, lease renewals) and
        what each keeps doing (a warm pool).

        On the way out the pool is drained and pending container removals finish."""
        self.workers.register()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat)
                group.start_soon(self.router.serve)
                if serving:
                    self._settle_dead_workers()
                    await self._recover_if_alone()
                    # One replica at a time reaps and renews; another takes over once its lead lapses.
                    leads = functools.partial(self.workers.lead, "duties", self.settings.worker_lapse_s)
                    group.start_soon(self.duties.run, self.settings.reap_interval_s, leads)
                    for service in self.services.all():
                        serve = getattr(service, "serve", None)
                        if serve is not None and service is not self.scheduler:
                            group.start_soon(serve)
                group.start_soon(self.scheduler.serve)
                try:
                    yield self
                finally:
                    group.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await self.services.close_all()
        except BaseExceptionGroup as group_error:
            # The background loops never raise; an error here is the body's own.
            raise sole_error(group_error) from None
        finally:
            # Once the loops have ended: a heartbeat that had not yet run would register it again.
            self.workers.leave()

    async def _heartbeat(self) -> None:
        while True:
            try:
                self.workers.beat()
                self.router.refresh()
            except Exception:  # the store is unreachable a moment: the next beat retries
                log.exception("worker heartbeat failed")
            await anyio.sleep(HEARTBEAT_S)

    async def _recover_if_alone(self) -> None:
        """Remove what a previous process left half made, when no other server is alive:
        a live replica's "creating" resource is one it is making now, not one left behind.
        (A replica that dies beside live ones leaves its half-made ones to the next server
        that starts alone; its tasks are settled at once all the same.)"""
        alive = self.workers.alive()
        if alive != {self.workers.id}:
            log.info("%d other server(s) alive on this store: start-up recovery left to them", len(alive) - 1)
            return
        abandoned = await self.duties.recover()
        if abandoned:
            log.warning("removed %d resource(s) a previous process left half-made", len(abandoned))

    def _settle_dead_workers(self) -> None:
        """Fail or retry the tasks of replicas (or a previous process) that died, then forget them."""
        alive, dead, places = self.workers.census()
        failed = self.scheduler.recover(alive, places)
        if failed:
            log.warning("failed %d task(s) a stopped or dead server left running", len(failed))
        if dead:
            with self.store.transaction() as session:
                self.workers.forget(session, dead)

    def prepare(self, tool_name: str, arguments: dict[str, Any]) -> PreparedCall:
        """The tool's op and its arguments, validated once; a clear error for bad ones."""
        ready = PREPARED.get()
        if ready is not None and ready.tool == tool_name and ready.arguments == arguments:
            return ready
        found = self.registry.find(tool_name)
        if found is None:
            raise NotFound(f"no tool {tool_name!r}: list the tools to see what exists.")
        skill, op = found
        try:
            args = op.input.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from exc
        binding = self.scheduler.binding(f"{skill.name}.{op.name}")
        return PreparedCall(tool_name, arguments, op, binding, args)

    async def run(
        self, tenant_id: str, prepared: PreparedCall, progress: Progress | None = None, agent: str | None = None
    ) -> TaskOutcome:
        """Run a prepared call as a task (for the tenant's ``agent``, if named) and return its
        outcome (or raise its error)."""
        outcome = await self.scheduler.run(tenant_id, prepared.binding, prepared.args, progress, agent)
        outcome.unwrap()
        return outcome

    async def call(
        self,
        tenant_id: str,
        tool_name: str,
        arguments: dict[str, Any],
        progress: Progress | None = None,
        agent: str | None = None,
    ) -> TaskOutcome:
        """Validate, run as a task, and return its outcome (or raise its error)."""
        return await self.run(tenant_id, self.prepare(tool_name, arguments), progress, agent)

    async def call_or_hand_over(
        self, tenant_id: str, tool_name: str, arguments: dict[str, Any], within_s: float, agent: str | None = None
    ) -> TaskOutcome | str | PreparedCall:
        """For an op that can run long: run the call as a task, and answer like ``call`` if
        it ends within ``within_s``, else leave it running, unwaited, and return its task id.
        Any other call comes back prepared, for the caller's ordinary path (see PREPARED)."""
        prepared = self.prepare(tool_name, arguments)
        if not prepared.op.runs_long(prepared.args):
            return prepared
        task_id = self.scheduler.submit(tenant_id, prepared.binding, prepared.args, agent)
        try:
            with anyio.move_on_after(within_s):
                outcome = await self.scheduler.wait(task_id)
                outcome.unwrap()
                return outcome
        except anyio.get_cancelled_exc_class():
            # The caller went away before it had a handle: nobody could ever poll this task.
            with anyio.CancelScope(shield=True):
                await self.scheduler.cancel(tenant_id, task_id)
            raise
        self.scheduler.forget(task_id)
        return task_id

    def close(self) -> None:
        self.store.close()
