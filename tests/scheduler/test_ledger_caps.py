"""A task is never charged more than it held at admission, the amount its budget check covered."""

from __future__ import annotations

from scheduler.ledger import capped
from scheduler.pricing import Charge


def test_charges_are_cut_from_the_last_to_what_was_held() -> None:
    charges = [Charge("task_fee", 1, 100), Charge("cpu_ms", 40, 30), Charge("memory_mib_s", 9, 5)]
    assert [c.amount_micros for c in capped(charges, 120)] == [100, 20, 0]
    assert [c.quantity for c in capped(charges, 120)] == [1, 40, 9], "what was used is still recorded"
    assert capped(charges, 1000) == charges
