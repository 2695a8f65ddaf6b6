"""Pricing metered requests whose amount is not in the request: read it from Stripe first.

A confirm of an existing payment intent costs the intent's ``amount``; a capture costs
``amount_to_capture``, else the intent's ``amount_capturable``; a refund costs its
``amount``, else what is left of the charge (or the intent's amount). The proxy reads the
object with the real secret just before the reservation, so the reservation is made for
what Stripe is about to move. The currency is checked too: caps are in USD.

What this cannot see: an update of the intent's amount between this read and the
forward. Through the proxy that is impossible (``POST /v1/payment_intents/*`` is refused by
the endpoint table); only the holder of the Stripe secret itself could do it.
"""

from __future__ import annotations

from dataclasses import replace

import httpx

from core.errors import SpendgateError
from proxy.stripe_request import MAX_AMOUNT_CENTS, StripeRequest
from proxy.upstream import read_object


def _read(http: httpx.Client, secret: str, path: str, version: str, param: str) -> dict:
    try:
        obj = read_object(http, secret, path, version)
    except (httpx.HTTPError, ValueError) as exc:
        raise SpendgateError("upstream_unavailable", "Stripe could not be asked for the amount; nothing was reserved "
                             "or forwarded. Retry.") from exc
    if obj is None:
        raise SpendgateError("not_found", f"No such object: {path.rsplit('/', 1)[-1][:60]}", param=param)
    return obj


def _usd(obj: dict, param: str) -> None:
    if str(obj.get("currency", "")).lower() != "usd":
        raise SpendgateError("currency_not_allowed", "Spend caps are in USD; this object is in another currency.",
                             param=param)


def _cents(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value <= MAX_AMOUNT_CENTS else 0


def price(request: StripeRequest, http: httpx.Client, secret: str, version: str) -> StripeRequest:
    """The request with `amount_cents` set from Stripe where the request does not carry it."""
    if request.kind not in ("intent", "capture", "refund"):
        return request
    params = dict(request.params)
    if request.kind in ("intent", "capture"):
        intent = _read(http, secret, request.path.rsplit("/", 1)[0], version, "intent")
        _usd(intent, "intent")
        amount = _cents(intent.get("amount"))
        if request.kind == "capture":
            amount = request.amount_cents or _cents(intent.get("amount_capturable")) or amount
    else:
        charge, intent_id = params.get("charge"), params.get("payment_intent")
        if bool(charge) == bool(intent_id):
            raise SpendgateError("parameter_not_allowed", "A refund names exactly one of charge or payment_intent.",
                                 param="charge")
        if charge:
            obj = _read(http, secret, f"/v1/charges/{charge}", version, "charge")
            left = _cents(obj.get("amount")) - _cents(obj.get("amount_refunded"))
        else:
            obj = _read(http, secret, f"/v1/payment_intents/{intent_id}", version, "payment_intent")
            left = _cents(obj.get("amount_received")) or _cents(obj.get("amount"))
        _usd(obj, "charge" if charge else "payment_intent")
        amount = request.amount_cents or left
    if amount <= 0:
        raise SpendgateError("amount_invalid", "Stripe reports nothing to move for this request.", param="amount")
    return replace(request, amount_cents=amount, currency="usd")
