"""`charge_stripe`'s work: check the invoice, find the card, charge once, say what happened.

One charge, in order (every step answers with a JSON string; nothing raises to the agent):

1. **Arguments** (`agents.idempotency.ChargeArgs`): ``YYYY-MM`` / ``YYYY-qN`` periods and
   ``in_…`` invoice ids only; anything else is ``invalid_arguments`` naming the form.
2. **Invoice** (when given): ``GET /v1/invoices/{id}`` with the lookup key. An id that does
   not exist, or belongs to another customer, is ``invalid_arguments``: a model that invents
   invoice ids must not turn each invention into a new charge identity.
3. **Card** (`billing.cards.resolve`, the one resolution the billing runs use).
4. **Charge**: ``POST /api/billing/charges`` (`billing.once`) with the billing key and the
   attempt key (`charge_idempotency_key`: identity + card). The route claims customer +
   period + invoice in the billing table first — across vault keys, agents and runs — so a
   paid identity answers ``already_charged`` with its intent id before anything is sent.
5. **Answer**: paid (now, or earlier: "already charged: <pi id>"), declined (retry after the
   card is fixed), refused (STOP texts that name the key they concern), transient (retry
   with the same arguments).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agents import approval, messages
from agents.idempotency import CURRENCY, ChargeArgs, charge_idempotency_key, charge_identity
from billing import cards
from proxy.client import Outcome, ProxyResult

log = logging.getLogger(__name__)

SOURCE = "spendgate-agent"


class Client(Protocol):
    """The part of `proxy.client.ProxyClient` a charge uses."""

    def get(self, path: str, params: Any = None) -> ProxyResult: ...

    def post(self, path: str, params: Any, *, idempotency_key: str | None = None) -> ProxyResult: ...


@dataclass(frozen=True)
class Keys:
    """The clients a charge goes through, and which role's key each one holds."""

    once: Client  # POST /api/billing/charges with the charging key
    lookup: Client  # GETs (card, invoice) with the lookup key
    charge_role: str = "billing"  # "audit" when only an audit key is configured (the proxy then refuses)
    lookup_role: str = "audit"  # "billing" when only a billing key is configured


def payment_intent_params(args: ChargeArgs, payment_method: str) -> dict[str, Any]:
    """The Stripe parameters of a charge: a confirmed, off-session payment intent.

    Every value is a function of the charge identity or the card, exactly what the attempt
    key covers, so the proxy's fingerprint and the key never disagree.
    """
    metadata = {"billing_period": args.billing_period, "charge_identity": charge_identity(args), "source": SOURCE}
    if args.invoice_id:
        metadata["invoice_id"] = args.invoice_id
    return {
        "customer": args.customer_id,
        "amount": args.amount_cents,
        "currency": CURRENCY,
        "payment_method": payment_method,
        "confirm": "true",
        "off_session": "true",
        "metadata": metadata,
    }


def payment_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a payment intent or charge a model needs, nothing more."""
    metadata = body.get("metadata") or {}
    summary = {
        "charge_id": body.get("id"),
        "object": body.get("object"),
        "status": body.get("status"),
        "amount_cents": body.get("amount"),
        "currency": body.get("currency"),
        "customer_id": body.get("customer"),
        "billing_period": metadata.get("billing_period"),
        "invoice_id": metadata.get("invoice_id"),
        "created": body.get("created"),
    }
    if body.get("object") == "charge":
        summary.update(payment_intent=body.get("payment_intent"), paid=body.get("paid"), refunded=body.get("refunded"))
    return {k: v for k, v in summary.items() if v is not None}


def detail(result: ProxyResult) -> str:
    return f"{result.code or 'HTTP ' + str(result.status)}: {result.message or 'no details'}"


def key_failure(result: ProxyResult) -> str | None:
    """The code of a refusal that is about the key itself (cap spent, revoked, expired, unknown)."""
    by_outcome = {
        Outcome.CAP_EXCEEDED: "spend_cap_exceeded",
        Outcome.REVOKED: "vault_key_revoked",
        Outcome.EXPIRED: "vault_key_expired",
    }
    if result.outcome in by_outcome:
        return by_outcome[result.outcome]
    return "vault_key_invalid" if result.code == "vault_key_invalid" else None


def charge(keys: Keys, args: ChargeArgs, fixed_payment_method: str | None = None) -> str:
    """Steps 2-5 of the module docstring for validated `args`; never raises."""
    try:
        refusal = _check_invoice(keys, args)
        if refusal is not None:
            return refusal
        payment_method, refusal = _payment_method_for(keys, args.customer_id, fixed_payment_method)
        if refusal is not None:
            return refusal
        key = charge_idempotency_key(args, payment_method)
        result = keys.once.post("/charges", payment_intent_params(args, payment_method), idempotency_key=key)
        return _charge_output(keys, result, key)
    except Exception as exc:  # never raise into the agent framework
        log.exception("charge_stripe failed unexpectedly (%s %s)", args.customer_id, args.billing_period)
        return messages.error_output("internal_error", messages.INTERNAL_ERROR.format(detail=type(exc).__name__))


def _lookup_refusal(keys: Keys, result: ProxyResult, what: str) -> str:
    """A refused or failed read during a charge: STOP for a dead key (naming it), else a plain error."""
    if result.outcome is Outcome.TRANSIENT:
        return messages.error_output(
            "upstream_unavailable", messages.TRANSIENT_CHARGE.format(detail=detail(result)), retryable=True
        )
    if code := key_failure(result):
        return messages.error_output(code, "", vault_key=keys.lookup_role)
    return messages.error_output(
        result.code or "lookup_refused", messages.LOOKUP_REFUSED.format(what=what, detail=detail(result)), stop=False
    )


def _check_invoice(keys: Keys, args: ChargeArgs) -> str | None:
    if not args.invoice_id:
        return None
    result = keys.lookup.get(f"/v1/invoices/{args.invoice_id}")
    if result.outcome is Outcome.SUCCEEDED:
        owner = result.body.get("customer")
        owner = owner.get("id") if isinstance(owner, Mapping) else owner
        if owner == args.customer_id:
            return None
        return messages.error_output(
            "invalid_arguments",
            messages.INVOICE_OTHER_CUSTOMER.format(invoice_id=args.invoice_id, customer_id=args.customer_id),
        )
    if result.status == 404:
        return messages.error_output("invalid_arguments", messages.NO_INVOICE.format(invoice_id=args.invoice_id))
    return _lookup_refusal(keys, result, "the invoice")


def _payment_method_for(keys: Keys, customer_id: str, fixed: str | None) -> tuple[str, str | None]:
    """(the customer's card, None) or ("", the error output that ends the charge)."""
    try:
        choice = cards.resolve(keys.lookup, customer_id, fixed)
    except cards.CardLookupTransient as exc:
        return "", messages.error_output(
            "upstream_unavailable", messages.TRANSIENT_CHARGE.format(detail=str(exc)), retryable=True
        )
    except cards.CardLookupRefused as refused:
        return "", _lookup_refusal(keys, refused.result, "the customer's saved payment method")
    if choice.payment_method:
        return choice.payment_method, None
    if choice.code is cards.CardCode.CUSTOMER_DELETED:
        return "", messages.error_output("customer_deleted", messages.CUSTOMER_DELETED.format(customer_id=customer_id))
    if choice.code is cards.CardCode.NO_SUCH_CUSTOMER:
        return "", messages.error_output("no_such_customer", messages.NO_CUSTOMER.format(customer_id=customer_id))
    return "", messages.error_output("no_payment_method", messages.NO_PAYMENT_METHOD)


def _charge_output(keys: Keys, result: ProxyResult, key: str) -> str:
    if result.outcome is Outcome.SUCCEEDED:
        body = {**payment_summary(result.body), "idempotency_key": key, "replayed": result.replayed}
        status = body.get("status")
        if status != "succeeded":
            body["message"] = (
                f"The payment exists but its status is {status!r}, so it is not paid yet. "
                "Do not charge again; tell the user."
            )
        elif result.replayed:
            body["message"] = messages.ALREADY_CHARGED.format(charge_id=body.get("charge_id"))
        else:
            body["message"] = messages.CHARGED
        return json.dumps(body)
    if result.code == "already_charged":
        intent = (result.body.get("error") or {}).get("payment_intent")
        return messages.error_output(
            "already_charged", messages.ALREADY_BILLED.format(charge_id=intent), charge_id=intent, idempotency_key=key
        )
    if result.code in approval.CODES:
        return approval.charge_held(str(result.code), result.body, key)
    if result.code == "charge_in_progress":
        return messages.error_output(
            "charge_in_progress", messages.CHARGE_IN_PROGRESS, retryable=True, idempotency_key=key
        )
    if code := key_failure(result):
        return messages.error_output(code, "", idempotency_key=key, vault_key=keys.charge_role)
    if result.outcome is Outcome.FORBIDDEN:
        return messages.error_output(result.code or "endpoint_not_allowed", messages.NOT_ALLOWED_TO_CHARGE)
    if result.outcome is Outcome.DECLINED:
        return messages.error_output(result.code or "card_declined", messages.DECLINED, idempotency_key=key)
    if result.outcome is Outcome.TRANSIENT:
        return messages.error_output(
            result.code or "upstream_unavailable",
            messages.TRANSIENT_CHARGE.format(detail=detail(result)),
            retryable=True,
            idempotency_key=key,
        )
    return messages.error_output(
        result.code or "invalid_request", messages.REJECTED.format(detail=detail(result)), idempotency_key=key
    )
