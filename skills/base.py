"""How a skill declares its ops, and the kind of resource it keeps, if any.

An op is typed input and output, honest annotations and a handler. The MCP
tools and the CLI are both generated from these declarations, so the two
always agree. A handler returns the op's own output; the call path adds the
task's id and cost (``Envelope``), so no output model declares them.

A skill whose resources outlive a call (sandboxes, databases, VMs) also names
the factory of its manager (``Skill.resource``): the process builds it from
the ``Platform`` and runs it through ``scheduler.resources.ResourceKind``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model

from sandbox.docker import DockerDriver
from sandbox.engines import Engines
from scheduler.leases import Leases
from scheduler.pricing import PriceCatalog, Usage
from scheduler.resources import LiveQuota, Services
from scheduler.store import Store
from scheduler.tasks import OpBinding, Scheduler, TaskContext

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class Secret:
    """Marks a field whose value no task row keeps (``Annotated[str, Secret()]``): an
    environment variable's value, a password. It changes no schema."""


def secret_fields(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """The names of the fields marked Secret in ``model`` and the models inside it."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names = set()
    for name, info in model.model_fields.items():
        if any(isinstance(mark, Secret) for mark in info.metadata):
            names.add(name)
        for inner in models_in(info.annotation):
            names |= secret_fields(inner, seen)
    return names


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in models_in(arg)]


class OpInput(BaseModel):
    """Base of every op's arguments: unknown arguments are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Money(BaseModel):
    """An amount, exact: integer micro-units and the decimal with its currency."""

    micros: int = Field(description="Integer micro-units of the currency (1 USD = 1,000,000).")
    amount: str = Field(description="The same amount as a decimal with its currency, e.g. '0.000120 USD'.")


def unsettled() -> Money:
    return Money(micros=0, amount="")


class Envelope(BaseModel):
    """What the call path adds to every op's output: the task that ran it and its cost."""

    task_id: str
    cost: Money = Field(default_factory=unsettled)


@cache
def enveloped(output: type[BaseModel]) -> type[BaseModel]:
    """The op's output with the envelope's fields after its own: the tool's outputSchema."""
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info in Envelope.model_fields.items()}
    return create_model(output.__name__, __base__=output, __module__=output.__module__, **fields)


@dataclass(frozen=True)
class Op(Generic[In, Out]):
    name: str
    description: str
    input: type[In]
    output: type[Out]
    handler: Callable[[TaskContext, In], Awaitable[Out]]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False
    # Ends a resource or a task (a delete, a destroy, a cancel): like a read, it is
    # never refused for money, since it can only lower what the tenant spends.
    releases: bool = False
    # Sells compute by the token though it changes nothing (an embedding): held ahead and
    # refused for money like any paid op, where a plain read is never refused.
    metered: bool = False
    timeout_s: Callable[[In], float] = lambda args: 60.0
    worst_case: Callable[[In], Usage] = lambda args: Usage()
    # Whether a call may take long: a client that declares MCP tasks then gets a
    # task handle at once instead of waiting for the result.
    runs_long: Callable[[In], bool] = lambda args: False
    # Destroys data: the client is asked to confirm first (unless auto_confirm is set); a
    # function of the arguments when only some calls do (a whole namespace, not one memory).
    confirm: bool | Callable[[In], bool] = False
    # Rows of a CSV rendering of the output, for `--csv` in the CLI.
    csv: Callable[[Out], list[list[str]]] | None = None
    # The answer carries this call's task id and cost (``Envelope``); off for ops
    # that report on other tasks or on money themselves (tasks_*, billing_*).
    envelope: bool = True
    # What of its arguments a call refused for money can lower, in the refusal's advice; None
    # where its hold is its fee alone, or nothing it asks for changes it.
    ask_less: str | None = None

    def confirms(self, args: In) -> bool:
        """Whether this call must be confirmed by the client first."""
        return self.confirm(args) if callable(self.confirm) else self.confirm

    @property
    def always_admitted(self) -> bool:
        return (self.read_only or self.releases) and not self.metered

    @property
    def wire_output(self) -> type[BaseModel]:
        return enveloped(self.output) if self.envelope else self.output


@dataclass(frozen=True)
class Platform:
    """What a skill's resource manager is built from: the shared store, money and
    scheduler, the data dir, and the process's settings (each skill reads the
    fields it owns)."""

    store: Store
    catalog: PriceCatalog
    scheduler: Scheduler
    leases: Leases
    services: Services
    home: Path
    settings: Any
    # The Docker Engine's driver, shared by every skill that starts containers
    # (a test hands in its own).
    docker: DockerDriver | None = None
    # Several engines for sandboxes (``docker_hosts``); None: ``docker`` alone.
    engines: Engines | None = None


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    doc: str  # the body of SKILL.md: how an agent should use the skill
    ops: tuple[Op[Any, Any], ...] = field(default_factory=tuple)
    # The manager of the skill's long-lived resources, built once by the process;
    # handlers reach it as ``ctx.service(<its class>)``.
    resource: Callable[[Platform], object] | None = None
    # The per-tenant caps on how many of them live at once (one, or several: memories and
    # their namespaces).
    quota: LiveQuota | tuple[LiveQuota, ...] | None = None
    # Front matter of SKILL.md, verbatim (as YAML gives it: strings, lists, maps).
    meta: dict[str, Any] = field(default_factory=dict)
    # The skill's folder: SKILL.md and the files an agent reads on demand beside it.
    folder: Path | None = None
    # SQLite extensions (loadable files) its tables need on every connection of a SQLite store.
    store_extensions: tuple[str, ...] = ()
    # Argument fields naming its resources when they live on the machine that made them (a
    # file, a process): a call naming one runs on a server there (``scheduler.routing``).
    host_bound: tuple[str, ...] = ()

    def op(self, name: str) -> Op[Any, Any] | None:
        return next((op for op in self.ops if op.name == name), None)


def binding(skill: str, op: Op[Any, Any]) -> OpBinding:
    """The scheduler's view of an op: the handler and the op's own functions take the
    arguments as the call path validated them, once."""
    return OpBinding(
        skill=skill,
        op=op.name,
        handler=op.handler,
        idempotent=op.idempotent,
        timeout_s=op.timeout_s,
        worst_case=op.worst_case,
        load=op.input.model_validate,
        always_admitted=op.always_admitted,
        envelope=op.envelope,
        secret=frozenset(secret_fields(op.input) | secret_fields(op.output)),
        keeps_result=op.runs_long,
        ask_less=op.ask_less,
    )
