"""The shared infrastructure a handler reaches through ``ctx.services``."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.pricing import PriceCatalog
from scheduler.sandboxes import SandboxManager
from scheduler.store import Store
from scheduler.tasks import Scheduler, TaskContext


@dataclass(frozen=True)
class Services:
    store: Store
    catalog: PriceCatalog
    scheduler: Scheduler
    sandboxes: SandboxManager


def services(ctx: TaskContext) -> Services:
    assert isinstance(ctx.services, Services)
    return ctx.services
