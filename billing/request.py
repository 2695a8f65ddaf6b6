"""Validating a `POST /api/billing/runs` body into a `RunRequest`.

Bad input gets a 400 `policy_invalid` naming the field in `param` (Stripe-style nested
names such as `customers[3][amount_cents]`) and starts nothing. A customer listed twice for
one charge identity (same customer, same purpose: the run has one billing period) is a 400
`duplicate_customers` whose message names the indexes; a deliberate second charge gives
each entry its own `purpose`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from billing.payloads import ChargeItem, CustomerQuery, Endpoint, RunRequest
from core.errors import SpendgateError
from proxy.policy import parse_duration

FIELDS = frozenset(
    {
        "billing_period",
        "customers",
        "customer_query",
        "budget_usd",
        "max_parallel",
        "expires_in",
        "endpoint",
        "instance_id",
        "purpose",
        "require_approval",
        "approval_timeout",
    }
)
MAX_CUSTOMERS = 10_000
MAX_PARALLEL = 500  # bounds one batch sub-orchestration's history (see docs/billing.md)
MAX_AMOUNT_CENTS = 99_999_999
MAX_BUDGET_USD = Decimal(1_000_000)
MAX_TTL_HOURS = 24
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")
_ID = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_PURPOSE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


def _invalid(param: str, message: str) -> SpendgateError:
    return SpendgateError("policy_invalid", message, param=param)


def parse_run_request(body: Any) -> tuple[RunRequest, str | None]:
    """The validated run and the caller's `instance_id` (None: the host picks one)."""
    if not isinstance(body, Mapping):
        raise SpendgateError("body_invalid", "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _invalid(unknown[0], f"unknown field {unknown[0]!r}")

    period = body.get("billing_period")
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise _invalid("billing_period", "billing_period is required, as YYYY-MM (e.g. 2026-06)")

    instance_id = body.get("instance_id")
    if instance_id is not None and (not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id)):
        raise _invalid("instance_id", "instance_id must be 1-100 letters, digits, '-' or '_'")

    customers, query = body.get("customers"), body.get("customer_query")
    if (customers is None) == (query is None):
        raise _invalid("customers", "give exactly one of customers or customer_query")
    purpose = _purpose(body.get("purpose"), "purpose")
    items = None if customers is None else _customers(customers)
    if items is not None:
        _refuse_duplicates(items, purpose)
    return (
        RunRequest(
            billing_period=period,
            budget_cents=_budget(body.get("budget_usd")),
            max_parallel=_int(body.get("max_parallel", 50), "max_parallel", 1, MAX_PARALLEL),
            expires_in=_ttl(body.get("expires_in", "2h")),
            endpoint=_endpoint(body.get("endpoint", "payment_intents")),
            customers=items,
            customer_query=None if query is None else _query(query),
            purpose=purpose,
            require_approval=_flag(body.get("require_approval", False), "require_approval"),
            approval_timeout=None if body.get("approval_timeout") is None else _window(body["approval_timeout"]),
        ),
        instance_id,
    )


def _flag(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(param, f"{param} must be true or false")
    return value


def _window(value: Any) -> str:
    """An approval window shorter than the app's (`SPENDGATE_APPROVAL_TIMEOUT` caps it at start)."""
    try:
        if parse_duration(value).total_seconds() <= 0:
            raise ValueError("must be more than 0")
    except ValueError as exc:
        raise _invalid("approval_timeout", f"approval_timeout: {exc}") from None
    return str(value).strip()


def _int(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(param, f"{param} must be a whole number from {low} to {high}")
    return value


def _budget(value: Any) -> int:
    if value is None:
        raise _invalid("budget_usd", "budget_usd is required: the run's spend cap in US dollars")
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidOperation
        dollars = Decimal(str(value))
    except InvalidOperation:
        raise _invalid("budget_usd", "budget_usd must be a number of US dollars") from None
    cents = dollars * 100
    if not dollars.is_finite() or dollars <= 0 or dollars > MAX_BUDGET_USD or cents != cents.to_integral_value():
        raise _invalid(
            "budget_usd", f"budget_usd must be more than 0, at most {MAX_BUDGET_USD}, with at most 2 decimals"
        )
    return int(cents)


def _ttl(value: Any) -> str:
    try:
        ttl = parse_duration(value)
    except ValueError as exc:
        raise _invalid("expires_in", f"expires_in: {exc}") from None
    if not 0 < ttl.total_seconds() <= MAX_TTL_HOURS * 3600:
        raise _invalid("expires_in", f"expires_in must be more than 0 and at most {MAX_TTL_HOURS}h")
    return str(value).strip()


def _endpoint(value: Any) -> Endpoint:
    try:
        return Endpoint(value)
    except ValueError:
        raise _invalid("endpoint", "endpoint must be payment_intents or charges") from None


def _amount(value: Any, param: str) -> int:
    return _int(value, param, 1, MAX_AMOUNT_CENTS)


def _customers(value: Any) -> tuple[ChargeItem, ...]:
    if not isinstance(value, list) or not value:
        raise _invalid("customers", "customers must be a non-empty list")
    if len(value) > MAX_CUSTOMERS:
        raise _invalid("customers", f"at most {MAX_CUSTOMERS} customers per run")
    items = []
    for n, entry in enumerate(value):
        where = f"customers[{n}]"
        if not isinstance(entry, Mapping):
            raise _invalid(where, f"{where} must be an object with customer_id and amount_cents")
        extra = sorted(set(entry) - {"customer_id", "amount_cents", "payment_method", "purpose"})
        if extra:
            raise _invalid(f"{where}[{extra[0]}]", f"unknown field {extra[0]!r}")
        customer_id = entry.get("customer_id")
        if not isinstance(customer_id, str) or not _ID.match(customer_id):
            raise _invalid(f"{where}[customer_id]", "customer_id must be a Stripe id such as cus_123")
        method = entry.get("payment_method")
        if method is not None and (not isinstance(method, str) or not _ID.match(method)):
            raise _invalid(f"{where}[payment_method]", "payment_method must be a Stripe id such as pm_123")
        amount = _amount(entry.get("amount_cents"), f"{where}[amount_cents]")
        items.append(ChargeItem(customer_id, amount, method, _purpose(entry.get("purpose"), f"{where}[purpose]")))
    return tuple(items)


def _purpose(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PURPOSE.match(value):
        raise _invalid(param, "purpose must be 1-100 letters, digits, '-' or '_' (an invoice id, say)")
    return value


def _refuse_duplicates(items: tuple[ChargeItem, ...], run_purpose: str | None) -> None:
    """One entry per charge identity: the same customer twice is refused unless purposes differ."""
    seen: dict[tuple[str, str | None], list[int]] = {}
    for n, item in enumerate(items):
        seen.setdefault((item.customer_id, item.purpose or run_purpose), []).append(n)
    repeated = [(key, indexes) for key, indexes in seen.items() if len(indexes) > 1]
    if repeated:
        listed = "; ".join(
            f"{cid}{' (purpose ' + purpose + ')' if purpose else ''} at indexes {', '.join(map(str, idx))}"
            for (cid, purpose), idx in repeated
        )
        first = repeated[0][1]
        raise SpendgateError(
            "duplicate_customers",
            f"customers listed more than once for one charge: {listed}. A customer is charged once per billing "
            "period and purpose; give each entry its own purpose to charge it deliberately twice.",
            param=f"customers[{first[1]}][customer_id]",
        )


def _query(value: Any) -> CustomerQuery:
    if not isinstance(value, Mapping):
        raise _invalid("customer_query", "customer_query must be an object with metadata and amount_cents")
    extra = sorted(set(value) - {"metadata", "amount_cents"})
    if extra:
        raise _invalid(f"customer_query[{extra[0]}]", f"unknown field {extra[0]!r}")
    metadata = value.get("metadata")
    if (
        not isinstance(metadata, Mapping)
        or not metadata
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise _invalid("customer_query[metadata]", "metadata must be a non-empty object of strings")
    return CustomerQuery(dict(metadata), _amount(value.get("amount_cents"), "customer_query[amount_cents]"))
