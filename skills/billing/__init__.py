"""The billing skill: usage, balance and invoices from the ledger."""

from __future__ import annotations

from skills.base import Op
from skills.billing import models as m
from skills.billing import ops
from skills.registry import skill_from_doc

SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "usage",
            "Your charges grouped by skill, op, model, day or item over a time range, with the total.",
            m.UsageInput,
            m.UsageOutput,
            ops.usage,
            read_only=True,
            envelope=False,
            idempotent=True,
        ),
        Op(
            "balance",
            "What you have spent, what running tasks hold, your budget, what is left and the alert state.",
            m.BalanceInput,
            m.BalanceOutput,
            ops.balance,
            read_only=True,
            envelope=False,
            idempotent=True,
        ),
        Op(
            "invoice",
            "A month's invoice: lines by skill, op, model and item, and the total.",
            m.InvoiceInput,
            m.InvoiceOutput,
            ops.invoice,
            read_only=True,
            envelope=False,
            idempotent=True,
            csv=ops.invoice_csv,
        ),
    ),
)
