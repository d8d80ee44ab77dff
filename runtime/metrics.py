"""``/metrics`` in Prometheus's text format, with ``prometheus-client``.

Two sources. What the store knows is read from the store at each scrape, so the
numbers are the store's and every replica reports the same: tasks by skill, op
and state, spend and holds per tenant, ledger totals, tokens per model, and live
resources per kind (one gauge for each kind the process serves, from the leases
that say what lives and what it holds). What only this process sees is counted
as it happens, through the scheduler's observer port (``scheduler.observe``):
the latency of each op, admission refusals by reason, and each service's own
readings (a warm pool's size, claims, misses and refills, per template).

The endpoint answers an operator's key (``Authorization: Bearer``), or anyone on
the separate ``metrics_address`` an operator binds to a private interface.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from common.errors import CloudSkillsError
from scheduler.models import Lease, LedgerEntry, Task, Tenant
from scheduler.observe import Reports, Sample
from scheduler.tasks import FINAL_STATES

if TYPE_CHECKING:
    from runtime.app import App

PREFIX = "cloudskills"
# Seconds, from a no-op task's few milliseconds to a long build or model call.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class TaskMetrics:
    """What this process counts as tasks go: the scheduler's observer for metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "From submission to settlement, per op (what a caller waits), for tasks this process admitted.",
            ["skill", "op", "state"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_admission_refusals",
            "Calls refused at admission, before any work, by reason (the error's code).",
            ["skill", "op", "reason"],
            registry=registry,
        )
        # When each task this process admitted began its submission (time.time_ns()).
        self._since: dict[str, int] = {}

    def admitted(self, task_id: str, since_ns: int) -> None:
        self._since[task_id] = since_ns

    def refused(self, skill: str, op: str, error: CloudSkillsError) -> None:
        self.refusals.labels(skill, op, error.code).inc()

    def settled(self, task_id: str, skill: str, op: str, state: str, now_ns: int) -> None:
        since = self._since.pop(task_id, None)
        if since is not None:
            self.latency.labels(skill, op, state).observe((now_ns - since) / 1e9)


def family(name: str, kind: str, help_: str, labels: Iterable[str]) -> GaugeMetricFamily | CounterMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(f"{PREFIX}_{name}", help_, labels=list(labels))
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_, labels=list(labels))


class StoreCollector:
    """Read at each scrape: the store's own numbers, and the services' readings."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # collected afresh each time; nothing to register ahead

    def collect(self) -> Iterator[Metric]:
        # One snapshot, and no write lock: a scrape's scans never hold up a settlement.
        with self.app.store.reading() as session:
            tasks = session.execute(
                select(Task.skill, Task.op, Task.state, func.count()).group_by(Task.skill, Task.op, Task.state)
            ).all()
            tenants = session.execute(
                select(Tenant.id, Tenant.spent_micros, Tenant.held_micros, Tenant.budget_micros)
            ).all()
            ledger = session.execute(
                select(LedgerEntry.skill, func.count(), func.coalesce(func.sum(LedgerEntry.amount_micros), 0)).group_by(
                    LedgerEntry.skill
                )
            ).all()
            tokens = session.execute(
                select(LedgerEntry.model, LedgerEntry.item, func.sum(LedgerEntry.quantity))
                .where(LedgerEntry.model.is_not(None), LedgerEntry.item.startswith("tokens."))
                .group_by(LedgerEntry.model, LedgerEntry.item)
            ).all()
            leases = session.execute(
                select(Lease.kind, func.count(), func.coalesce(func.sum(Lease.held_micros), 0))
                .where(Lease.ended_at.is_(None))
                .group_by(Lease.kind)
            ).all()
        yield from self._tasks(tasks)
        yield from self._tenants(tenants)
        yield from self._ledger(ledger, tokens)
        yield from self._live(leases)
        yield from self._readings()

    def _tasks(self, rows: Iterable[Any]) -> Iterator[Metric]:
        finished = family(
            "tasks", "counter", "Tasks that reached a final state, by skill, op and state.", ["skill", "op", "state"]
        )
        active = family("tasks_active", "gauge", "Tasks queued or running now.", ["skill", "op", "state"])
        for skill, op, state, count in rows:
            (finished if state in FINAL_STATES else active).add_metric([skill, op, state], count)
        yield finished
        yield active

    def _tenants(self, rows: Iterable[Any]) -> Iterator[Metric]:
        spent = family("tenant_spend_micros", "counter", "What each tenant has spent, in micro-units.", ["tenant"])
        held = family("tenant_held_micros", "gauge", "What each tenant has held for running work.", ["tenant"])
        budget = family("tenant_budget_micros", "gauge", "Each tenant's hard budget (tenants with one).", ["tenant"])
        for tenant_id, spent_micros, held_micros, budget_micros in rows:
            spent.add_metric([tenant_id], spent_micros)
            held.add_metric([tenant_id], held_micros)
            if budget_micros is not None:
                budget.add_metric([tenant_id], budget_micros)
        yield from (spent, held, budget)

    def _ledger(self, ledger: Iterable[Any], tokens: Iterable[Any]) -> Iterator[Metric]:
        entries = family("ledger_entries", "counter", "Ledger entries, by skill.", ["skill"])
        amount = family("ledger_micros", "counter", "What the ledger has charged, in micro-units, by skill.", ["skill"])
        for skill, count, total in ledger:
            entries.add_metric([skill], count)
            amount.add_metric([skill], total)
        used = family(
            "tokens",
            "counter",
            "Model tokens billed, by model and kind (input, cached_input, output).",
            ["model", "kind"],
        )
        for model, item, quantity in tokens:
            used.add_metric([model, item.split(":", 1)[0].removeprefix("tokens.")], quantity)
        yield from (entries, amount, used)

    def _live(self, rows: Iterable[Any]) -> Iterator[Metric]:
        live = family("live_resources", "gauge", "Resources alive now (with an open lease), by kind.", ["kind"])
        held = family("live_resources_held_micros", "gauge", "What live resources hold ahead, by kind.", ["kind"])
        found = {kind: (count, hold) for kind, count, hold in rows}
        for kind in sorted({k.kind for k in self.app.services.kinds()} | set(found)):
            count, hold = found.get(kind, (0, 0))
            live.add_metric([kind], count)
            held.add_metric([kind], hold)
        yield from (live, held)

    def _readings(self) -> Iterator[Metric]:
        by_name: dict[str, list[Sample]] = defaultdict(list)
        for service in self.app.services.all():
            if isinstance(service, Reports):
                for sample in service.samples():
                    by_name[sample.name].append(sample)
        for name, samples in sorted(by_name.items()):
            first = samples[0]
            metric = family(name, first.kind, first.help, sorted(first.labels))
            for sample in samples:
                metric.add_metric([sample.labels[k] for k in sorted(first.labels)], sample.value)
            yield metric


class Metrics:
    """The process's registry: its counters, the store's numbers, the process's own (CPU, memory)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        self.tasks = TaskMetrics(self.registry)
        self.registry.register(StoreCollector(app))
        ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def allowed(self, request: Request, open_: bool) -> bool:
        """The operator's key, unless this listener is the private ``metrics_address`` (``open_``)."""
        if open_:
            return True
        operator = self.app.settings.operator_key
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if operator is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.encode(), operator.encode())

    def endpoint(self, open_: bool = False) -> Any:
        async def metrics(request: Request) -> Response:
            if not self.allowed(request, open_):
                return Response(
                    "/metrics needs the operator's key: Authorization: Bearer <operator_key>.\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                    media_type="text/plain",
                )
            return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)

        return metrics
