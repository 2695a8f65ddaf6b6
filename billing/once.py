"""`POST /api/billing/charges`: a payment intent charged once per customer, period and purpose.

Agent tools run outside the app, holding only vault keys, so they cannot reach the billing
table where charge identities are claimed (`billing.claims`). This route claims for them:
the caller sends exactly the form it would send to `POST /api/stripe/v1/payment_intents`
(same vault key, same `Idempotency-Key`), and the route

1. authenticates the vault key the way the proxy does (hash, revoked, expired) and checks
   that its allowlist holds `POST /v1/payment_intents`. A key that could not charge claims
   nothing (so it cannot block anybody's identity): its request goes to the proxy as is,
   which refuses it and audits the refusal, as it always did;
2. claims the identity (`customer`, `metadata[billing_period]`, `metadata[invoice_id]` or
   `metadata[purpose]`) for the owner (key id, idempotency key): `already_charged` (409,
   with the intent's id in `error.payment_intent`) or `charge_in_progress` (409,
   retryable) bill nothing;
3. forwards the form unchanged through the proxy (`proxy.client.ProxyClient`, the caller's
   own key, so the proxy meters, caps and deduplicates exactly as before), settles the
   claim, and answers the proxy's status, body and `Idempotent-Replayed` header.

The billing runs use the same claims in-process (`billing.charging`), so a run and an agent
bill a customer once between them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

from azure.core.exceptions import AzureError

from billing.charging import Claims
from billing.claims import MONEY_MAY_MOVE, Identity, Owner, Verdict
from core.errors import SpendgateError
from proxy.client import Outcome, ProxyResult
from proxy.keys import parse_vault_key, secret_matches
from proxy.policy import allowed_rule
from proxy.store import KeyRecord

CHARGE_PATH = "/v1/payment_intents"
log = logging.getLogger("spendgate.billing")


class Keys(Protocol):
    """The part of `proxy.store.LedgerStore` used to authenticate the caller."""

    def read_key(self, key_id: str) -> KeyRecord | None: ...


class Poster(Protocol):
    def post(self, path: str, params: Any, *, idempotency_key: str | None = None) -> ProxyResult: ...


@dataclass(frozen=True)
class Answer:
    """What the route sends back."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    retryable: bool = False


def charges_base_url(proxy_url: str) -> str:
    """`…/api/stripe` → `…/api/billing`: where `POST /charges` lives, beside the proxy."""
    base = proxy_url.rstrip("/")
    return (base[: -len("/stripe")] if base.endswith("/stripe") else base) + "/billing"


def charging_key(keys: Keys, vault_key: str | None, now: datetime) -> KeyRecord | None:
    """The caller's key record if the key is genuine, active and may charge; else None."""
    try:
        parsed = parse_vault_key(vault_key)
    except SpendgateError:
        return None
    record = keys.read_key(parsed.key_id)
    if record is None or not secret_matches(parsed.secret, record.secret_hash) or record.status(now) != "active":
        return None
    if allowed_rule(record.allowed_endpoints, "POST", CHARGE_PATH) is None:  # the proxy's own check
        return None
    return record


def identity_of(form: Mapping[str, str]) -> Identity:
    """The charge identity a payment intent's form names; `body_invalid` without one."""
    customer, period = form.get("customer", ""), form.get("metadata[billing_period]", "")
    if not customer.startswith("cus_") or not period:
        raise SpendgateError(
            "policy_invalid",
            "a charge needs customer (cus_…) and metadata[billing_period]: they are its identity",
            param="customer" if not customer.startswith("cus_") else "metadata[billing_period]",
        )
    purpose = form.get("metadata[invoice_id]") or form.get("metadata[purpose]") or None
    return Identity(customer, period, purpose)


def parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (ValueError, UnicodeDecodeError):
        raise SpendgateError("body_invalid", "Send application/x-www-form-urlencoded.") from None
    return dict(pairs)


def charge_once(
    keys: Keys,
    claims: Claims,
    poster: Callable[[str], Poster],
    vault_key: str | None,
    idempotency_key: str | None,
    body: bytes,
    now: datetime,
) -> Answer:
    """Claim, charge through the proxy with the caller's key, settle (module doc)."""
    if not idempotency_key:
        raise SpendgateError("policy_invalid", "Idempotency-Key is required", param="Idempotency-Key")
    form = parse_form(body)
    identity = identity_of(form)
    record = charging_key(keys, vault_key, now)
    if record is None:  # the proxy refuses it (and audits that); nothing to claim
        result = poster(vault_key or "").post(CHARGE_PATH, form, idempotency_key=idempotency_key)
        return Answer(result.status or 502, result.body, replayed=result.replayed, retryable=result.retryable)
    owner = Owner(record.key_id, idempotency_key, record.label)
    amount = int(form["amount"]) if form.get("amount", "").isdigit() else 0
    claim = claims.claim(identity, owner, amount, now)
    if claim.verdict is Verdict.ALREADY_CHARGED:
        holder = claim.owner.label if claim.owner else ""
        err = SpendgateError(
            "already_charged",
            f"{identity.customer_id} was already charged for {identity.billing_period}"
            f"{' (' + identity.purpose + ')' if identity.purpose else ''}"
            f"{' by ' + holder if holder else ''}; nothing was billed. A deliberate second charge needs "
            "its own invoice_id.",
        )
        body_out = err.body()
        body_out["error"]["payment_intent"] = claim.object_id  # type: ignore[assignment]
        return Answer(err.status, body_out)
    if claim.verdict is Verdict.IN_PROGRESS:
        err = SpendgateError("charge_in_progress")
        return Answer(err.status, err.body(), retryable=True)
    result = poster(vault_key or "").post(CHARGE_PATH, form, idempotency_key=idempotency_key)
    if result.outcome is not Outcome.TRANSIENT:  # transient: the claim stays for the same owner's retry
        moved = result.outcome is Outcome.SUCCEEDED and result.body.get("status") in MONEY_MAY_MOVE
        try:
            claims.settle(identity, owner, moved_money=moved, object_id=result.object_id, now=now)
        except AzureError:  # the charge's answer stands; the next claimer settles from the proxy's record
            log.warning("could not settle the claim of %s (key %s)", identity.customer_id, owner.key_id)
    return Answer(result.status or 502, result.body, replayed=result.replayed, retryable=result.retryable)
