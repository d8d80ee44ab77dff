from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from scheduler.pricing import MIB_PER_GIB, MS_PER_HOUR, PriceCatalog, Usage, div_round_half_up, format_money

quantities = st.integers(min_value=0, max_value=10**12)
rates = st.integers(min_value=0, max_value=10**9)


@given(quantities, st.integers(min_value=1, max_value=10**12))
def test_rounding_is_within_half_a_micro(numerator: int, denominator: int) -> None:
    exact = Fraction(numerator, denominator)
    assert abs(div_round_half_up(numerator, denominator) - exact) <= Fraction(1, 2)


@given(quantities, quantities, rates, rates)
def test_each_usage_entry_is_within_one_micro_of_exact(
    vcpu_ms: int, mib_ms: int, vcpu_hour: int, gib_hour: int
) -> None:
    catalog = PriceCatalog(version="t", currency="USD", vcpu_hour=vcpu_hour, gib_hour=gib_hour)
    exact = {
        "vcpu_ms": Fraction(vcpu_ms * vcpu_hour, MS_PER_HOUR),
        "mib_ms": Fraction(mib_ms * gib_hour, MS_PER_HOUR * MIB_PER_GIB),
    }
    for charge in catalog.usage_charges(Usage(vcpu_ms=vcpu_ms, mib_ms=mib_ms)):
        assert abs(charge.amount_micros - exact[charge.item]) <= 1
        assert isinstance(charge.amount_micros, int)


def test_zero_usage_costs_zero() -> None:
    catalog = PriceCatalog.load()
    assert catalog.usage_charges(Usage()) == []
    assert sum(c.amount_micros for c in catalog.task_charges("billing.usage", Usage())) == 0


def test_task_charges_are_fee_plus_usage() -> None:
    catalog = PriceCatalog(
        version="t", currency="USD", task_fees={"default": 7, "a.b": 100}, vcpu_hour=3_600_000
    )
    charges = catalog.task_charges("a.b", Usage(vcpu_ms=1500))
    assert [(c.item, c.amount_micros) for c in charges] == [("task_fee", 100), ("vcpu_ms", 1500)]
    assert catalog.task_fee("other.op") == 7


def test_money_is_formatted_exactly() -> None:
    assert format_money(120, "USD") == "0.000120 USD"
    assert format_money(12_345_678_901, "USD") == "12345.678901 USD"


def test_the_shipped_catalog_loads_with_integer_prices() -> None:
    catalog = PriceCatalog.load()
    assert catalog.version and catalog.currency == "USD"
    assert all(isinstance(v, int) and v >= 0 for v in catalog.task_fees.values())
