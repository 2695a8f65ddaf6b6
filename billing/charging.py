"""Charging one customer and reading customers, through the governance proxy.

Plain functions over the one proxy client (`proxy.client.ProxyClient`), called by the
thin activities in `activities/billing.py` and driven directly by unit tests.

The rule that makes Durable retries safe: terminal answers are *returned* as an
`ItemResult` (charged, declined, cap_exceeded, revoked, expired, invalid); only transient
faults *raise* (`TransientChargeError`), so `call_activity_with_retry` repeats exactly
those, with the same `Idempotency-Key: {instanceId}-{itemIndex}`.

How a customer's own card is used (checked against localstripe, as on Stripe): for
`charges`, `customer=<id>` charges the customer's default source. For `payment_intents`
the intent is confirmed off-session with `payment_method=<the customer's default source>`
(a `card_…` id is accepted where a payment method is expected); without a payment method
localstripe answers 500, so items without a card are `invalid` and never sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from billing.payloads import (
    ChargeItem,
    ChargeRequest,
    CustomerQuery,
    Endpoint,
    FetchRequest,
    FetchResult,
    ItemOutcome,
    ItemResult,
)
from proxy.client import Outcome, ProxyResult

PAGE_SIZE = 100
LOOKUP_THREADS = 8
# Stripe's (and localstripe's) codes for a card refused at charge time; localstripe sends
# them with type invalid_request_error rather than card_error, so match on the code too.
DECLINE_CODES = frozenset(
    {"card_declined", "expired_card", "incorrect_cvc", "insufficient_funds", "processing_error", "incorrect_number"}
)
_TERMINAL: dict[Outcome, ItemOutcome] = {
    Outcome.DECLINED: ItemOutcome.DECLINED,
    Outcome.CAP_EXCEEDED: ItemOutcome.CAP_EXCEEDED,
    Outcome.REVOKED: ItemOutcome.REVOKED,
    Outcome.EXPIRED: ItemOutcome.EXPIRED,
    Outcome.FORBIDDEN: ItemOutcome.INVALID,
    Outcome.INVALID: ItemOutcome.INVALID,
}


class TransientChargeError(RuntimeError):
    """A fault worth retrying with the same idempotency key (the activity raises it)."""


class ProxyCaller(Protocol):
    """The part of `proxy.client.ProxyClient` these functions use."""

    def post(self, path: str, params: Any, *, idempotency_key: str | None = None) -> ProxyResult: ...

    def get(self, path: str, params: Any = None) -> ProxyResult: ...


def charge_params(request: ChargeRequest) -> dict[str, Any]:
    """The Stripe form parameters of one charge (nested keys are encoded by the client).

    The metadata ties every Stripe object to its run and item (localstripe refuses a
    `description` on payment intents, so none is sent).
    """
    item = request.item
    params: dict[str, Any] = {
        "amount": item.amount_cents,
        "currency": "usd",
        "customer": item.customer_id,
        "metadata": {
            "billing_period": request.billing_period,
            "orchestration_id": request.orchestration_id,
            "item_index": str(request.item_index),
        },
    }
    if request.endpoint is Endpoint.PAYMENT_INTENTS:
        params.update({"payment_method": item.payment_method, "confirm": "true", "off_session": "true"})
    return params


def charge_customer(client: ProxyCaller, request: ChargeRequest) -> ItemResult:
    """Charge one customer once; returns the terminal outcome or raises TransientChargeError."""
    item = request.item
    if request.endpoint is Endpoint.PAYMENT_INTENTS and not item.payment_method:
        return _result(
            request,
            ItemOutcome.INVALID,
            code="no_payment_method",
            reason="the customer has no default card to confirm a payment intent with",
        )
    answer = client.post(f"/v1/{request.endpoint}", charge_params(request), idempotency_key=request.idempotency_key)
    return interpret(request, answer)


def interpret(request: ChargeRequest, answer: ProxyResult) -> ItemResult:
    """Map the proxy's answer to an item outcome; raise only for transient faults."""
    if answer.outcome is Outcome.TRANSIENT:
        raise TransientChargeError(f"item {request.item_index}: {answer.status} {answer.code or ''}".strip())
    if answer.outcome is Outcome.SUCCEEDED:
        status = answer.body.get("status")
        if request.endpoint is Endpoint.PAYMENT_INTENTS and status not in ("succeeded", "processing"):
            return _result(
                request,
                ItemOutcome.DECLINED,
                object_id=answer.object_id,
                code=str(status),
                reason=f"payment intent ended {status}",
                replayed=answer.replayed,
            )
        return _result(request, ItemOutcome.CHARGED, object_id=answer.object_id, replayed=answer.replayed)
    outcome = _TERMINAL.get(answer.outcome, ItemOutcome.INVALID)
    if outcome is ItemOutcome.INVALID and answer.status == 402 and answer.code in DECLINE_CODES:
        outcome = ItemOutcome.DECLINED
    return _result(request, outcome, code=answer.code, reason=answer.message, replayed=answer.replayed)


def _result(request: ChargeRequest, outcome: ItemOutcome, **extra: Any) -> ItemResult:
    return ItemResult(request.item_index, request.item.customer_id, request.item.amount_cents, outcome, **extra)


class TransientFetchError(RuntimeError):
    """Reading customers hit a transient fault; the activity raises it to be retried."""


def fetch_customers(client: ProxyCaller, request: FetchRequest) -> FetchResult:
    """Customers to bill: by query (paging through all customers) or the given ones with their cards."""
    if request.query is not None:
        return _select_by_query(client, request.query)
    return _resolve_cards(client, request.items or ())


def _select_by_query(client: ProxyCaller, query: CustomerQuery) -> FetchResult:
    # localstripe has no /v1/customers/search: list everything, filter metadata here.
    items: list[ChargeItem] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if after:
            params["starting_after"] = after
        answer = client.get("/v1/customers", params)
        failure = _fetch_failure(answer)
        if failure is not None:
            return FetchResult((), failure, pages)
        pages += 1
        data = answer.body.get("data") or []
        items.extend(
            ChargeItem(c["id"], query.amount_cents, c.get("default_source"))
            for c in data
            if not c.get("deleted") and query.matches(c)
        )
        if not answer.body.get("has_more") or not data:
            return FetchResult(tuple(items), None, pages)
        after = data[-1]["id"]


def _resolve_cards(client: ProxyCaller, items: Iterable[ChargeItem]) -> FetchResult:
    """Fill in each given customer's default card (kept as is when the caller named one)."""
    items = list(items)
    todo = [i for i in items if i.payment_method is None]

    def lookup(item: ChargeItem) -> ProxyResult:
        return client.get(f"/v1/customers/{item.customer_id}")

    with ThreadPoolExecutor(max_workers=LOOKUP_THREADS) as pool:
        answers = dict(zip((i.customer_id for i in todo), pool.map(lookup, todo), strict=True))
    resolved: list[ChargeItem] = []
    for item in items:
        answer = answers.get(item.customer_id)
        if answer is None:
            resolved.append(item)
            continue
        if answer.outcome is Outcome.TRANSIENT:
            raise TransientFetchError(f"customer {item.customer_id}: {answer.status}")
        if answer.outcome in (Outcome.REVOKED, Outcome.EXPIRED, Outcome.FORBIDDEN):
            return FetchResult((), str(_TERMINAL[answer.outcome]), 0)
        card = answer.body.get("default_source") if answer.outcome is Outcome.SUCCEEDED else None
        resolved.append(ChargeItem(item.customer_id, item.amount_cents, card))
    return FetchResult(tuple(resolved), None, 0)


def _fetch_failure(answer: ProxyResult) -> str | None:
    if answer.outcome is Outcome.SUCCEEDED:
        return None
    if answer.outcome is Outcome.TRANSIENT:
        raise TransientFetchError(f"GET /v1/customers: {answer.status} {answer.code or ''}".strip())
    return str(_TERMINAL.get(answer.outcome, ItemOutcome.INVALID))
