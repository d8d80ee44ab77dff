"""Prices, in integer micro-units, and the arithmetic that turns usage into money.

Quantities are integers in the smallest unit we meter (milliseconds of vCPU,
MiB-milliseconds of memory) and every conversion rounds once, half up, so an
entry is never more than half a micro-unit off the exact value.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path

MICROS_PER_UNIT = 1_000_000
MS_PER_HOUR = 3_600_000
MIB_PER_GIB = 1024


def div_round_half_up(numerator: int, denominator: int) -> int:
    """Integer division rounding halves up (quantities and prices are never negative)."""
    return (2 * numerator + denominator) // (2 * denominator)


def format_money(micros: int, currency: str) -> str:
    """'0.000120 USD': the exact decimal of an amount, for people and agents."""
    return f"{Decimal(micros) / MICROS_PER_UNIT:.6f} {currency}"


@dataclass(frozen=True)
class Usage:
    """What a task used, as the backend measured it."""

    vcpu_ms: int = 0  # allocated vCPUs x milliseconds
    mib_ms: int = 0  # allocated memory in MiB x milliseconds

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.vcpu_ms + other.vcpu_ms, self.mib_ms + other.mib_ms)


@dataclass(frozen=True)
class Charge:
    item: str
    quantity: int
    amount_micros: int


@dataclass(frozen=True)
class PriceCatalog:
    version: str
    currency: str
    task_fees: dict[str, int] = field(default_factory=dict)
    vcpu_hour: int = 0
    gib_hour: int = 0

    @classmethod
    def load(cls, path: Path | None = None) -> PriceCatalog:
        """The catalog in the repo, or the file at ``path`` (config override)."""
        text = path.read_text() if path else resources.files("scheduler").joinpath("prices.toml").read_text()
        raw = tomllib.loads(text)
        fees = {str(k): int(v) for k, v in raw.get("task_fee", {}).items()}
        rates = raw.get("rates", {})
        catalog = cls(
            version=str(raw["version"]),
            currency=str(raw.get("currency", "USD")),
            task_fees=fees,
            vcpu_hour=int(rates.get("vcpu_hour", 0)),
            gib_hour=int(rates.get("gib_hour", 0)),
        )
        if any(v < 0 for v in [*fees.values(), catalog.vcpu_hour, catalog.gib_hour]):
            raise ValueError("the price catalog has a negative price")
        return catalog

    def task_fee(self, op_key: str) -> int:
        return self.task_fees.get(op_key, self.task_fees.get("default", 0))

    def usage_charges(self, usage: Usage) -> list[Charge]:
        charges = []
        if usage.vcpu_ms:
            amount = div_round_half_up(usage.vcpu_ms * self.vcpu_hour, MS_PER_HOUR)
            charges.append(Charge("vcpu_ms", usage.vcpu_ms, amount))
        if usage.mib_ms:
            amount = div_round_half_up(usage.mib_ms * self.gib_hour, MS_PER_HOUR * MIB_PER_GIB)
            charges.append(Charge("mib_ms", usage.mib_ms, amount))
        return charges

    def task_charges(self, op_key: str, usage: Usage) -> list[Charge]:
        """Everything a settled task owes: its fee and its usage."""
        fee = self.task_fee(op_key)
        return [Charge("task_fee", 1, fee), *self.usage_charges(usage)]

    def worst_case(self, op_key: str, usage: Usage) -> int:
        """The most a task may cost, held at admission."""
        return sum(charge.amount_micros for charge in self.task_charges(op_key, usage))

    def format(self, micros: int) -> str:
        return format_money(micros, self.currency)
