from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.pricing import PriceCatalog, Rate, Usage, div_round_half_up, format_money, parse_money

quantities = st.integers(min_value=0, max_value=10**12)
prices = st.integers(min_value=0, max_value=10**9)
MODEL = "m"


def token_catalog(input_rate: int, cached_rate: int, output_rate: int) -> PriceCatalog:
    table = {
        "input_per_mtok": input_rate,
        "cached_input_per_mtok": cached_rate,
        "output_per_mtok": output_rate,
    }
    return PriceCatalog.parse({"version": "t", "models": {MODEL: table}})


@given(quantities, st.integers(min_value=1, max_value=10**12))
def test_rounding_is_within_half_a_micro(numerator: int, denominator: int) -> None:
    exact = Fraction(numerator, denominator)
    assert abs(div_round_half_up(numerator, denominator) - exact) <= Fraction(1, 2)


@given(quantities, quantities, prices, prices)
def test_each_machine_entry_is_within_one_micro_of_exact(
    vcpu_ms: int, mib_ms: int, vcpu_hour: int, gib_hour: int
) -> None:
    catalog = PriceCatalog.parse(
        {"version": "t", "resources": {"sandbox": {"vcpu_hour": vcpu_hour, "gib_hour": gib_hour}}}
    )
    exact = {
        "sandbox.vcpu_ms": Fraction(vcpu_ms * vcpu_hour, 3_600_000),
        "sandbox.mib_ms": Fraction(mib_ms * gib_hour, 3_600_000 * 1024),
    }
    for charge in catalog.usage_charges(Usage.of({"sandbox.vcpu_ms": vcpu_ms, "sandbox.mib_ms": mib_ms})):
        assert isinstance(charge.amount_micros, int)
        assert abs(charge.amount_micros - exact[charge.item]) <= 1


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    prices,
    prices,
    prices,
)
def test_cached_tokens_are_charged_once_at_the_cached_rate(
    prompt: int, cached_share: int, completion: int, input_rate: int, cached_rate: int, output_rate: int
) -> None:
    cached = cached_share % (prompt + 1)  # the engine reports cached tokens as part of the prompt
    catalog = token_catalog(input_rate, cached_rate, output_rate)
    usage = Usage.tokens(MODEL, input=prompt - cached, cached_input=cached, output=completion)
    charges = {c.item: c for c in catalog.usage_charges(usage)}
    assert sum(c.quantity for item, c in charges.items() if "input" in item) == prompt
    exact = Fraction((prompt - cached) * input_rate + cached * cached_rate + completion * output_rate, 1_000_000)
    total = sum(c.amount_micros for c in charges.values())
    assert abs(total - exact) <= Fraction(len(charges), 2)
    assert all(c.model == MODEL for c in charges.values())


@given(st.sampled_from(["sandbox", "tokens"]))
def test_zero_usage_is_charged_as_zero(kind: str) -> None:
    catalog = PriceCatalog.load()
    usage = Usage.of({"sandbox.vcpu_ms": 0}) if kind == "sandbox" else Usage.tokens("smollm2-135m-instruct")
    assert catalog.usage_charges(usage) == []
    assert catalog.worst_case("billing.usage", usage) == 0


def test_task_charges_are_fee_plus_usage() -> None:
    catalog = PriceCatalog("t", "USD", task_fees={"default": 7, "a.b": 100}, rates={"sandbox.vcpu_ms": Rate(1, 1)})
    charges = catalog.task_charges("a.b", Usage.of({"sandbox.vcpu_ms": 1500}))
    assert [(c.item, c.amount_micros) for c in charges] == [("task_fee", 100), ("sandbox.vcpu_ms", 1500)]
    assert catalog.task_fee("other.op") == 7


def test_an_unpriced_meter_is_refused_not_given_away() -> None:
    with pytest.raises(ValueError, match="no price"):
        PriceCatalog.load().usage_charges(Usage.of({"gpu.ms": 5}))


def test_money_is_exact_both_ways() -> None:
    assert format_money(120, "USD") == "0.000120 USD"
    assert format_money(12_345_678_901, "USD") == "12345.678901 USD"
    assert parse_money("5") == 5_000_000 and parse_money("0.000001") == 1
    for bad in ("-1", "0.0000001", "abc"):
        with pytest.raises(ValueError):
            parse_money(bad)


def test_the_shipped_catalog_prices_every_kind_of_use() -> None:
    catalog = PriceCatalog.load()
    assert catalog.version and catalog.currency == "USD"
    for meter in (
        "sandbox.vcpu_ms",
        "vm.disk_mib_ms",
        "database.instance_ms.small",
        "database.storage_mib_ms",
    ):
        assert meter in catalog.rates
    assert "smollm2-135m-instruct" in catalog.models()
