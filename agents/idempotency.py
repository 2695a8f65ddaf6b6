"""The idempotency key of an agent's charge, derived from what is being charged.

An agent cannot carry a key across its own retries: the SDK's retry, a retried run
and a replayed thread each call the tool afresh with nothing but the arguments. So
the key is a hash of the *normalized* arguments — the same charge always maps to
the same key, however the model spells it:

>>> key = charge_idempotency_key(ChargeArgs.parse(" cus_A1 ", 2900, "June 2026"))
>>> key == charge_idempotency_key(ChargeArgs.parse("cus_A1", "2900", "2026-06"))
True
>>> key.startswith("sg-agent-charge-v1-") and len(key) <= 255
True

A legitimately repeated identical charge (a second invoice in the same period) is
told apart by `invoice_id`, which is part of the key when given.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "sg-agent-charge-v1-"  # bump the version if the normalization changes
MAX_AMOUNT_CENTS = 99_999_999  # Stripe's maximum for USD ($999,999.99)
MAX_TEXT_LENGTH = 100
CURRENCY = "usd"

_MONTH_NAMES = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTHS = {n: i for i, name in enumerate(_MONTH_NAMES, start=1) for n in (name, name[:3])} | {"sept": 9}
_YEAR_MONTH = re.compile(r"^(\d{4})[-/. ](\d{1,2})$")
_MONTH_YEAR = re.compile(r"^(\d{1,2})[-/. ](\d{4})$")
_NAMED_MONTH_YEAR = re.compile(r"^([a-z]+)\.?[-/ ,]*(\d{4})$")
_YEAR_NAMED_MONTH = re.compile(r"^(\d{4})[-/ ,]*([a-z]+)\.?$")
_QUARTER = re.compile(r"^(?:q([1-4])[-/ ]*(\d{4})|(\d{4})[-/ ]*q([1-4]))$")
_ID = re.compile(r"^[A-Za-z0-9_\-]+$")


class InvalidArguments(ValueError):
    """The model's arguments cannot describe a charge; the message says which and why."""


def normalize_billing_period(value: str) -> str:
    """Canonical spelling of a billing period: `YYYY-MM`, `YYYY-qN`, or trimmed lower-case text.

    >>> [normalize_billing_period(p) for p in ("2026-06", "June 2026", "06/2026", "jun 2026", "Q2 2026", "Annual  Plan")]
    ['2026-06', '2026-06', '2026-06', '2026-06', '2026-q2', 'annual plan']
    """
    text = " ".join(str(value).split()).casefold()
    month_year: tuple[str, str] | None = None
    if m := _YEAR_MONTH.match(text):
        month_year = (m.group(2), m.group(1))
    elif m := _MONTH_YEAR.match(text):
        month_year = (m.group(1), m.group(2))
    elif (m := _NAMED_MONTH_YEAR.match(text)) and m.group(1) in _MONTHS:
        month_year = (str(_MONTHS[m.group(1)]), m.group(2))
    elif (m := _YEAR_NAMED_MONTH.match(text)) and m.group(2) in _MONTHS:
        month_year = (str(_MONTHS[m.group(2)]), m.group(1))
    elif m := _QUARTER.match(text):
        quarter, year = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        return f"{year}-q{quarter}"
    if month_year and 1 <= int(month_year[0]) <= 12:
        return f"{month_year[1]}-{int(month_year[0]):02d}"
    return text


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


def _identifier(name: str, value: Any, prefix: str | None = None) -> str:
    text = str(value).strip() if value is not None else ""
    if not text or len(text) > MAX_TEXT_LENGTH or not _ID.match(text):
        raise InvalidArguments(f"{name} must be a Stripe-style id (letters, digits, _ or -), got {value!r}")
    if prefix and not text.startswith(prefix):
        raise InvalidArguments(f"{name} must start with {prefix!r}, got {value!r}")
    return text


@dataclass(frozen=True)
class ChargeArgs:
    """The normalized arguments of one charge: what the key, the request and the answer use."""

    customer_id: str
    amount_cents: int
    billing_period: str
    invoice_id: str | None = None

    @classmethod
    def parse(cls, customer_id: Any, amount_cents: Any, billing_period: Any, invoice_id: Any = None) -> ChargeArgs:
        """Validate and normalize raw tool arguments; raises `InvalidArguments`."""
        period = normalize_billing_period(billing_period) if billing_period is not None else ""
        if not period or len(period) > MAX_TEXT_LENGTH:
            raise InvalidArguments(f"billing_period must be a short text such as '2026-06', got {billing_period!r}")
        invoice = None if invoice_id in (None, "") else _identifier("invoice_id", invoice_id)
        return cls(_identifier("customer_id", customer_id, "cus_"), _amount(amount_cents), period, invoice)


def charge_idempotency_key(args: ChargeArgs) -> str:
    """The idempotency key for `args`: a prefix plus the SHA-256 of their canonical JSON (83 chars)."""
    canonical = json.dumps(
        {
            "customer": args.customer_id,
            "amount": args.amount_cents,
            "currency": CURRENCY,
            "period": args.billing_period,
            "invoice": args.invoice_id,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()
