"""The shared infrastructure a handler reaches through ``ctx.services``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.pricing import PriceCatalog
from scheduler.sandboxes import SandboxManager
from scheduler.store import Store
from scheduler.tasks import Scheduler, TaskContext

if TYPE_CHECKING:  # the database skill's own handlers import this module
    from skills.db.instances import DatabaseManager
    from skills.inference.catalog import ModelCatalog
    from skills.vm.instances import VmManager


@dataclass(frozen=True)
class Services:
    store: Store
    catalog: PriceCatalog
    scheduler: Scheduler
    sandboxes: SandboxManager
    databases: DatabaseManager
    vms: VmManager
    models: ModelCatalog


def services(ctx: TaskContext) -> Services:
    assert isinstance(ctx.services, Services)
    return ctx.services
