"""Charging one customer and reading customers, through the governance proxy.

Plain functions over the one proxy client (`proxy.client.ProxyClient`), called by the
thin activities in `activities/billing.py` and driven directly by unit tests.

The rule that makes Durable retries safe: terminal answers are *returned* as an
`ItemResult` (charged, already_charged, declined, cap_exceeded, revoked, expired, invalid);
only transient faults *raise* (`TransientChargeError`), so `call_activity_with_retry`
repeats exactly those, with the same `Idempotency-Key: {instanceId}-{itemIndex}`.

One charge per identity: before it charges, an item claims its charge identity (customer,
billing period, purpose) in the billing table (`billing.claims`); an identity another run
or an agent already charged answers `already_charged` with that intent's id and is not
sent. After the answer the claim is settled (charged, or released when no money moved).

Which card: `billing.cards` resolves it once, for runs and agent tools alike (explicit
`payment_method`, then `invoice_settings.default_payment_method`, then `default_source`,
then the only attached card). Items without one are `invalid` with the card code
(`no_payment_method`, `customer_deleted`, `no_such_customer`) and are never sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from billing import cards
from billing.claims import MONEY_MAY_MOVE, Claim, Identity, Owner, Verdict
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
from billing.plan import charge_label
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


class Claims(Protocol):
    """The part of `billing.claims.ChargeClaims` charging uses."""

    def claim(self, identity: Identity, owner: Owner, amount_cents: int, now: datetime) -> Claim: ...

    def settle(
        self, identity: Identity, owner: Owner, *, moved_money: bool, object_id: str | None, now: datetime
    ) -> None: ...


def charge_params(request: ChargeRequest) -> dict[str, Any]:
    """The Stripe form parameters of one charge (nested keys are encoded by the client).

    The metadata ties every Stripe object to its run and item and carries its charge
    identity (localstripe refuses a `description` on payment intents, so none is sent).
    """
    item = request.item
    metadata = {
        "billing_period": request.billing_period,
        "orchestration_id": request.orchestration_id,
        "item_index": str(request.item_index),
    }
    if item.purpose:
        metadata["purpose"] = item.purpose
    params: dict[str, Any] = {
        "amount": item.amount_cents,
        "currency": "usd",
        "customer": item.customer_id,
        "metadata": metadata,
    }
    if request.endpoint is Endpoint.PAYMENT_INTENTS:
        params.update({"payment_method": item.payment_method, "confirm": "true", "off_session": "true"})
    return params


def identity_of(request: ChargeRequest) -> Identity:
    """The charge identity of an item: its customer, the run's period, the item's purpose."""
    return Identity(request.item.customer_id, request.billing_period, request.item.purpose)


def owner_of(request: ChargeRequest) -> Owner:
    return Owner(request.key_id, request.idempotency_key, charge_label(request.orchestration_id))


def charge_customer(client: ProxyCaller, request: ChargeRequest, claims: Claims, now: datetime) -> ItemResult:
    """Charge one customer once per identity; returns the terminal outcome or raises TransientChargeError."""
    item = request.item
    if request.endpoint is Endpoint.PAYMENT_INTENTS and not item.payment_method:
        return _result(
            request,
            ItemOutcome.INVALID,
            code=item.card_code or "no_payment_method",
            reason=item.card_reason or "the customer has no card to confirm a payment intent with",
        )
    identity, owner = identity_of(request), owner_of(request)
    claim = claims.claim(identity, owner, item.amount_cents, now)
    if claim.verdict is Verdict.IN_PROGRESS:
        holder = claim.owner.label if claim.owner else "another charger"
        raise TransientChargeError(f"item {request.item_index}: charge_in_progress by {holder}")
    if claim.verdict is Verdict.ALREADY_CHARGED:
        holder = (claim.owner.label or claim.owner.key_id) if claim.owner else "another charger"
        return _result(
            request,
            ItemOutcome.ALREADY_CHARGED,
            object_id=claim.object_id,
            code="already_charged",
            reason=f"{identity.customer_id} was already charged for {identity.billing_period}"
            f"{' (' + identity.purpose + ')' if identity.purpose else ''} by {holder}; nothing was billed",
        )
    if claim.mine and claim.object_id:  # this very item charged before (a retry): nothing to send
        return _result(request, ItemOutcome.CHARGED, object_id=claim.object_id, replayed=True)
    answer = client.post(f"/v1/{request.endpoint}", charge_params(request), idempotency_key=request.idempotency_key)
    result = interpret(request, answer)  # raises on a transient fault: the claim stays for the retry
    if answer.outcome is Outcome.SUCCEEDED and answer.body.get("status") in UNFINISHED and result.object_id:
        return _cancel_unfinished(client, request, claims, identity, owner, result, now)
    claims.settle(identity, owner, moved_money=_moved_money(answer), object_id=result.object_id, now=now)
    return result


# A payment intent left waiting for the customer (3-D Secure) or for another card: not paid.
# The proxy holds its amount pending (it may still be paid); only a cancel Stripe confirms
# releases it, so the run cancels it and reports the item as not charged.
UNFINISHED = frozenset({"requires_action", "requires_payment_method", "requires_confirmation"})


def _cancel_unfinished(
    client: ProxyCaller,
    request: ChargeRequest,
    claims: Claims,
    identity: Identity,
    owner: Owner,
    result: ItemResult,
    now: datetime,
) -> ItemResult:
    """Cancel an unpaid intent through the proxy; the claim goes only once Stripe confirms the cancel."""
    intent = str(result.object_id)
    cancel = client.post(
        f"/v1/payment_intents/{intent}/cancel", {}, idempotency_key=f"{request.idempotency_key}-cancel"
    )
    if cancel.outcome is Outcome.TRANSIENT:  # retried: the create replays, the cancel is idempotent too
        raise TransientChargeError(f"item {request.item_index}: cancel of {intent}: {cancel.status} {cancel.code or ''}")
    if cancel.outcome is Outcome.SUCCEEDED and cancel.body.get("status") == "canceled":
        claims.settle(identity, owner, moved_money=False, object_id=intent, now=now)
        return replace(result, reason=f"{result.reason}; canceled, nothing was charged")
    # Not canceled (already paid meanwhile, say): the money may move, so the claim and the hold stay.
    claims.settle(identity, owner, moved_money=True, object_id=intent, now=now)
    return replace(
        result,
        reason=f"{result.reason}; the cancel was refused ({cancel.code or cancel.status}), "
        "so it stays pending at the proxy until Stripe settles it",
    )


def _moved_money(answer: ProxyResult) -> bool:
    """Has money moved, or may it still move without us (an intent awaiting the customer)?"""
    if answer.outcome is not Outcome.SUCCEEDED:
        return False
    status = answer.body.get("status")
    return status in MONEY_MAY_MOVE or (answer.body.get("object") == "charge" and bool(answer.body.get("paid")))


def declined_object_id(body: Mapping[str, Any]) -> str | None:
    """The payment intent (else the charge) a decline names.

    Stripe puts the intent in the error (`error.payment_intent`, docs.stripe.com/api/errors);
    localstripe names only the failed charge (`error.charge`).
    """
    err = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    intent = err.get("payment_intent")  # type: ignore[union-attr]
    if isinstance(intent, Mapping) and isinstance(intent.get("id"), str):
        return str(intent["id"])
    if isinstance(intent, str):
        return intent
    charge = err.get("charge")  # type: ignore[union-attr]
    return charge if isinstance(charge, str) else None


def interpret(request: ChargeRequest, answer: ProxyResult) -> ItemResult:
    """Map the proxy's answer to an item outcome; raise only for transient faults."""
    if answer.outcome is Outcome.TRANSIENT:
        raise TransientChargeError(f"item {request.item_index}: {answer.status} {answer.code or ''}".strip())
    if answer.outcome is Outcome.SUCCEEDED:
        status = answer.body.get("status")
        if request.endpoint is Endpoint.PAYMENT_INTENTS and status == "processing":
            # Paid as far as the run is concerned; the proxy keeps it pending until Stripe settles it.
            return _result(request, ItemOutcome.CHARGED, object_id=answer.object_id, code="processing",
                           reason="processing: pending at the proxy until Stripe settles it", replayed=answer.replayed)
        if request.endpoint is Endpoint.PAYMENT_INTENTS and status != "succeeded":
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
    object_id = declined_object_id(answer.body) if outcome is ItemOutcome.DECLINED else None
    return _result(
        request, outcome, object_id=object_id, code=answer.code, reason=answer.message, replayed=answer.replayed
    )


def _result(request: ChargeRequest, outcome: ItemOutcome, **extra: Any) -> ItemResult:
    item = request.item
    return ItemResult(request.item_index, item.customer_id, item.amount_cents, outcome, card_source=item.card_source,
                      **extra)


class TransientFetchError(RuntimeError):
    """Reading customers hit a transient fault; the activity raises it to be retried."""


def fetch_customers(client: ProxyCaller, request: FetchRequest) -> FetchResult:
    """Customers to bill: by query (paging through all customers) or the given ones with their cards."""
    try:
        if request.query is not None:
            return _select_by_query(client, request.query)
        return _resolve_cards(client, request.items or ())
    except cards.CardLookupTransient as exc:
        raise TransientFetchError(str(exc)) from exc
    except cards.CardLookupRefused as refused:
        return FetchResult((), _refusal_code(refused.result), 0)


def _item(customer_id: str, amount_cents: int, choice: cards.CardChoice, purpose: str | None = None) -> ChargeItem:
    return ChargeItem(
        customer_id,
        amount_cents,
        choice.payment_method,
        purpose,
        None if choice.source is None else str(choice.source),
        None if choice.code is None else str(choice.code),
        choice.reason,
        choice.currency,
    )


def _select_by_query(client: ProxyCaller, query: CustomerQuery) -> FetchResult:
    # localstripe has no /v1/customers/search: list everything, filter metadata here. A
    # customer deleted between two pages makes localstripe restart the list, so ids seen
    # before are skipped (one item per customer, whatever the pager does).
    items: list[ChargeItem] = []
    seen: set[str] = set()
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
        for customer in data:
            cid = customer.get("id")
            if not isinstance(cid, str) or cid in seen or customer.get("deleted") or not query.matches(customer):
                continue
            seen.add(cid)
            items.append(_item(cid, query.amount_cents, cards.complete(client, customer)))
        if not answer.body.get("has_more") or not data:
            return FetchResult(tuple(items), None, pages)
        after = data[-1]["id"]


def _resolve_cards(client: ProxyCaller, items: Iterable[ChargeItem]) -> FetchResult:
    """Each given customer's card: the caller's own when named (never replaced), else resolved.

    Lookups are shared per customer id only among the items that named no card, so an
    item listed with an explicit `payment_method` keeps it even when the same customer is
    listed again without one.
    """
    items = list(items)
    todo = sorted({i.customer_id for i in items if not i.payment_method})

    def lookup(customer_id: str) -> cards.CardChoice:
        return cards.resolve(client, customer_id)

    with ThreadPoolExecutor(max_workers=LOOKUP_THREADS) as pool:
        choices = dict(zip(todo, pool.map(lookup, todo), strict=True))
    resolved: list[ChargeItem] = []
    for item in items:
        if item.payment_method:
            explicit = cards.CardChoice(item.payment_method, cards.CardSource.EXPLICIT)
            resolved.append(_item(item.customer_id, item.amount_cents, explicit, item.purpose))
        else:
            resolved.append(_item(item.customer_id, item.amount_cents, choices[item.customer_id], item.purpose))
    return FetchResult(tuple(resolved), None, 0)


def _refusal_code(answer: ProxyResult) -> str:
    return str(_TERMINAL.get(answer.outcome, ItemOutcome.INVALID))


def _fetch_failure(answer: ProxyResult) -> str | None:
    if answer.outcome is Outcome.SUCCEEDED:
        return None
    if answer.outcome is Outcome.TRANSIENT:
        raise TransientFetchError(f"GET /v1/customers: {answer.status} {answer.code or ''}".strip())
    return _refusal_code(answer)
