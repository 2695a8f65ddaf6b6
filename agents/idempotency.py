"""A charge's identity, and the idempotency key of one attempt at it.

An agent cannot carry a key across its own retries: the SDK's retry, a retried run and a
replayed conversation each call the tool afresh with nothing but the arguments. So both
are derived from the arguments, which the model may only send in one spelling (the tool
schema's `pattern`s and `ChargeArgs.parse` refuse anything else, so "June", "06/26" and
"2026-06" cannot become three keys):

- **The charge identity** (`charge_identity`): customer, amount, currency, billing period
  (``YYYY-MM`` or ``YYYY-qN``) and invoice id (``in_…``, or none). It is written into the
  payment intent's metadata (``metadata[charge_identity]``), and the charge route claims the
  customer + period + invoice in the billing table (`billing.claims`) before anything is
  sent, whichever vault key sends it: a paid identity answers "already charged: <pi id>"
  whatever else changed (the card, the key, the agent).
- **The attempt key** (`charge_idempotency_key`): the identity *plus the card* the attempt
  uses. Everything the tool sends is a function of these two, so the proxy's fingerprint of
  the request and the key always agree: a repeat never meets ``idempotency_error``. A repeat
  with the same card is a replay (a decline is replayed, never re-sent to the card); after
  the customer fixes the card (a new payment method), the identity, which was released by
  the decline, is charged with a new attempt key.

>>> args = ChargeArgs.parse(" cus_A1 ", "2900", "2026-06")
>>> charge_identity(args) == charge_identity(ChargeArgs.parse("cus_A1", 2900.0, "2026-06"))
True
>>> charge_idempotency_key(args, "pm_1") != charge_idempotency_key(args, "pm_2")
True
>>> ChargeArgs.parse("cus_A1", 2900, "June 2026")
Traceback (most recent call last):
...
agents.idempotency.InvalidArguments: billing_period must be YYYY-MM (e.g. 2026-06) or YYYY-qN (e.g. 2026-q2), got 'June 2026'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

IDENTITY_PREFIX = "sg-charge-v2-"  # bump the versions if what is hashed changes
KEY_PREFIX = "sg-agent-charge-v2-"
MAX_AMOUNT_CENTS = 99_999_999  # Stripe's maximum for USD ($999,999.99)
MAX_TEXT_LENGTH = 100
CURRENCY = "usd"

# The tool schemas carry the same patterns (agents/schema.py), so a strict-mode model cannot send other forms.
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2]|q[1-4])$"
INVOICE_PATTERN = r"^in_[A-Za-z0-9]{1,100}$"
CUSTOMER_PATTERN = r"^cus_[A-Za-z0-9]{1,100}$"
_PERIOD = re.compile(PERIOD_PATTERN)
_INVOICE = re.compile(INVOICE_PATTERN)
_CUSTOMER = re.compile(CUSTOMER_PATTERN)


class InvalidArguments(ValueError):
    """The model's arguments cannot describe a charge; the message says which and the expected form."""


def _amount(value: Any) -> int:
    """Whole cents from an int, an integral float or a digit string (models send all three)."""
    if isinstance(value, bool):
        raise InvalidArguments("amount_cents must be a whole number of cents, not true/false")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise InvalidArguments(f"amount_cents must be a whole number of cents, got {value!r}")
    if not 0 < value <= MAX_AMOUNT_CENTS:
        raise InvalidArguments(f"amount_cents must be between 1 and {MAX_AMOUNT_CENTS}, got {value}")
    return value


def _matching(name: str, value: Any, pattern: re.Pattern[str], form: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not pattern.match(text):
        raise InvalidArguments(f"{name} must be {form}, got {value!r}")
    return text


@dataclass(frozen=True)
class ChargeArgs:
    """The validated arguments of one charge: what the identity, the key, the request and the answer use."""

    customer_id: str
    amount_cents: int
    billing_period: str
    invoice_id: str | None = None

    @classmethod
    def parse(cls, customer_id: Any, amount_cents: Any, billing_period: Any, invoice_id: Any = None) -> ChargeArgs:
        """Validate raw tool arguments; raises `InvalidArguments` naming the expected form."""
        customer = _matching("customer_id", customer_id, _CUSTOMER, "a Stripe customer id like cus_123")
        period = _matching(
            "billing_period", billing_period, _PERIOD, "YYYY-MM (e.g. 2026-06) or YYYY-qN (e.g. 2026-q2)"
        )
        invoice = None
        if invoice_id not in (None, ""):
            invoice = _matching("invoice_id", invoice_id, _INVOICE, "a Stripe invoice id like in_1Nv… (or null)")
        return cls(customer, _amount(amount_cents), period, invoice)


def _digest(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def charge_identity(args: ChargeArgs) -> str:
    """What identifies the charge (no card, no key): written into the intent's metadata."""
    return IDENTITY_PREFIX + _digest(
        {
            "customer": args.customer_id,
            "amount": args.amount_cents,
            "currency": CURRENCY,
            "period": args.billing_period,
            "invoice": args.invoice_id,
        }
    )[:40]


def charge_idempotency_key(args: ChargeArgs, payment_method: str) -> str:
    """The Idempotency-Key of one attempt: the identity and the card, the only inputs of the request body."""
    return KEY_PREFIX + _digest({"identity": charge_identity(args), "payment_method": payment_method})
