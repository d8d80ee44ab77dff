"""How a skill declares its ops: typed input and output, honest annotations, a handler.

The MCP tools and the CLI are both generated from these declarations, so the
two always agree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from scheduler.pricing import Usage
from scheduler.tasks import UNSETTLED, OpBinding, TaskContext

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class OpInput(BaseModel):
    """Base of every op's arguments: unknown arguments are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Money(BaseModel):
    """An amount, exact: integer micro-units and the decimal with its currency."""

    micros: int = Field(description="Integer micro-units of the currency (1 USD = 1,000,000).")
    amount: str = Field(description="The same amount as a decimal with its currency, e.g. '0.000120 USD'.")


def unsettled() -> Money:
    """A placeholder the scheduler replaces with the task's settled cost."""
    return Money(**UNSETTLED)


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
    timeout_s: Callable[[In], float] = lambda args: 60.0
    worst_case: Callable[[In], Usage] = lambda args: Usage()
    # Whether a call may take long: a client that declares MCP tasks then gets a
    # task handle at once instead of waiting for the result.
    runs_long: Callable[[In], bool] = lambda args: False
    # Destroys data: the client is asked to confirm first (unless auto_confirm is set).
    confirm: bool = False
    # Rows of a CSV rendering of the output, for `--csv` in the CLI.
    csv: Callable[[Out], list[list[str]]] | None = None


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    doc: str  # the body of SKILL.md: how an agent should use the skill
    ops: tuple[Op[Any, Any], ...] = field(default_factory=tuple)

    def op(self, name: str) -> Op[Any, Any] | None:
        return next((op for op in self.ops if op.name == name), None)


def binding(skill: str, op: Op[Any, Any]) -> OpBinding:
    """The scheduler's view of an op: arguments and results as JSON-ready dicts."""

    async def handle(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        result = await op.handler(ctx, op.input.model_validate(args))
        return dict(result.model_dump(mode="json"))

    return OpBinding(
        skill=skill,
        op=op.name,
        handler=handle,
        idempotent=op.idempotent,
        timeout_s=lambda args: op.timeout_s(op.input.model_validate(args)),
        worst_case=lambda args: op.worst_case(op.input.model_validate(args)),
    )
