"""Prices, in integer micro-units, and the arithmetic that turns usage into money.

Usage is a set of meters, each an integer count of the smallest unit we
measure, named by the price catalog's tables: ``<kind>.vcpu_ms`` (allocated
vCPUs x milliseconds), ``<kind>.mib_ms``, ``<kind>.disk_mib_ms``,
``<kind>.instance_ms.<size>``, ``tokens.output:<model>`` and so on. Each meter has a rate (micro-units per so
many units) and every conversion rounds once, half up, so an entry is never
more than half a micro-unit off the exact value.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

MICROS_PER_UNIT = 1_000_000
MS_PER_HOUR = 3_600_000
MIB_PER_GIB = 1024
TOKENS_PER_MILLION = 1_000_000
TOKEN_KINDS = ("input", "cached_input", "output")


def div_round_half_up(numerator: int, denominator: int) -> int:
    """Integer division rounding halves up (quantities and prices are never negative)."""
    return (2 * numerator + denominator) // (2 * denominator)


def format_money(micros: int, currency: str) -> str:
    """'0.000120 USD': the exact decimal of an amount, for people and agents."""
    return f"{Decimal(micros) / MICROS_PER_UNIT:.6f} {currency}"


def parse_money(text: str) -> int:
    """'5', '5.25' or '0.000001' (units of the currency) as integer micro-units."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError as exc:
        raise ValueError(f"{text!r} is not an amount: write it like 5 or 12.50") from exc
    micros = value * MICROS_PER_UNIT
    if value < 0 or micros != micros.to_integral_value():
        raise ValueError(f"{text!r} must be a non-negative amount with at most 6 decimals")
    return int(micros)


def model_of(meter: str) -> str | None:
    """The model a token meter is for (``tokens.output:smollm2`` -> ``smollm2``)."""
    return meter.split(":", 1)[1] if meter.startswith("tokens.") and ":" in meter else None


@dataclass(frozen=True)
class Usage:
    """What a task used, as the backend measured it: meter name -> integer quantity."""

    meters: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def tokens(cls, model: str, input: int = 0, cached_input: int = 0, output: int = 0) -> Usage:
        """Token usage; ``input`` counts only the prompt tokens that were not cached."""
        counts = {"input": input, "cached_input": cached_input, "output": output}
        return cls.of({f"tokens.{kind}:{model}": n for kind, n in counts.items()})

    @classmethod
    def of(cls, meters: Mapping[str, int]) -> Usage:
        if any(quantity < 0 for quantity in meters.values()):
            raise ValueError("usage is never negative")
        return cls({name: int(q) for name, q in meters.items() if q})

    def __add__(self, other: Usage) -> Usage:
        merged = dict(self.meters)
        for name, quantity in other.meters.items():
            merged[name] = merged.get(name, 0) + quantity
        return Usage(merged)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self.meters.items()))

    def get(self, meter: str) -> int:
        return self.meters.get(meter, 0)

    def token_total(self) -> int:
        return sum(q for name, q in self.meters.items() if name.startswith("tokens."))


@dataclass(frozen=True)
class Rate:
    """``micros`` micro-units for every ``per`` units of a meter."""

    micros: int
    per: int

    def price(self, quantity: int) -> int:
        return div_round_half_up(quantity * self.micros, self.per)


@dataclass(frozen=True)
class Charge:
    item: str
    quantity: int
    amount_micros: int

    @property
    def model(self) -> str | None:
        return model_of(self.item)


def machine_rates(kind: str, table: Mapping[str, Any]) -> dict[str, Rate]:
    rates = {
        f"{kind}.vcpu_ms": Rate(int(table.get("vcpu_hour", 0)), MS_PER_HOUR),
        f"{kind}.mib_ms": Rate(int(table.get("gib_hour", 0)), MS_PER_HOUR * MIB_PER_GIB),
    }
    if "disk_gib_hour" in table:
        rates[f"{kind}.disk_mib_ms"] = Rate(int(table["disk_gib_hour"]), MS_PER_HOUR * MIB_PER_GIB)
    if "storage_gib_hour" in table:
        rates[f"{kind}.storage_mib_ms"] = Rate(int(table["storage_gib_hour"]), MS_PER_HOUR * MIB_PER_GIB)
    for size, hourly in dict(table.get("instance_hour", {})).items():
        rates[f"{kind}.instance_ms.{size}"] = Rate(int(hourly), MS_PER_HOUR)
    return rates


def model_rates(model: str, table: Mapping[str, Any]) -> dict[str, Rate]:
    return {f"tokens.{kind}:{model}": Rate(int(table[f"{kind}_per_mtok"]), TOKENS_PER_MILLION) for kind in TOKEN_KINDS}


@dataclass(frozen=True)
class PriceCatalog:
    version: str
    currency: str
    task_fees: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, Rate] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceCatalog:
        """The catalog in the repo, or the file at ``path`` (config override)."""
        text = path.read_text() if path else resources.files("scheduler").joinpath("prices.toml").read_text()
        return cls.parse(tomllib.loads(text))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> PriceCatalog:
        rates: dict[str, Rate] = {}
        for kind, table in dict(raw.get("resources", {})).items():
            rates.update(machine_rates(kind, table))
        for model, table in dict(raw.get("models", {})).items():
            rates.update(model_rates(model, table))
        fees = {str(k): int(v) for k, v in dict(raw.get("task_fee", {})).items()}
        if any(v < 0 for v in fees.values()) or any(r.micros < 0 for r in rates.values()):
            raise ValueError("the price catalog has a negative price")
        return cls(version=str(raw["version"]), currency=str(raw.get("currency", "USD")), task_fees=fees, rates=rates)

    def task_fee(self, op_key: str) -> int:
        return self.task_fees.get(op_key, self.task_fees.get("default", 0))

    def models(self) -> list[str]:
        return sorted({m for meter in self.rates if (m := model_of(meter))})

    def usage_charges(self, usage: Usage) -> list[Charge]:
        charges = []
        for meter, quantity in usage:
            rate = self.rates.get(meter)
            if rate is None:
                raise ValueError(f"no price for the meter {meter!r} in catalog {self.version}")
            charges.append(Charge(meter, quantity, rate.price(quantity)))
        return charges

    def task_charges(self, op_key: str, usage: Usage) -> list[Charge]:
        """Everything a settled task owes: its fee and its usage."""
        return [Charge("task_fee", 1, self.task_fee(op_key)), *self.usage_charges(usage)]

    def worst_case(self, op_key: str, usage: Usage) -> int:
        """The most a task may cost, held at admission.

        A meter with no price holds nothing: the task itself refuses what it
        cannot bill (an unknown model), and settlement prices strictly."""
        priced = Usage.of({meter: quantity for meter, quantity in usage if meter in self.rates})
        return sum(charge.amount_micros for charge in self.task_charges(op_key, priced))

    def format(self, micros: int) -> str:
        return format_money(micros, self.currency)
