"""Which card a charge uses: ONE resolution, shared by billing runs and agent tools.

Stripe's own order (docs.stripe.com/api/customers/object, `invoice_settings.default_payment_method`
"takes precedence over `default_source`"; docs.stripe.com/payments/payment-methods/transitioning):

1. the caller's explicit `payment_method`, if given (never replaced);
2. the customer's `invoice_settings.default_payment_method` (modern integrations);
3. the customer's `default_source` (legacy card or source);
4. the only card PaymentMethod attached to the customer (`GET /v1/payment_methods?customer=…&type=card`),
   reported as such (`source: "only_card"`); with several cards and no default, none is guessed.

Customers that cannot be charged get their own codes instead of "no card":
`customer_deleted` (real Stripe answers `GET /v1/customers/{id}` of a deleted customer with
200 `{"deleted": true}`, docs.stripe.com/api/customers/delete; localstripe answers 404) and
`no_such_customer` (404 `resource_missing`).

Reading goes through the proxy with a read-only key (`reader`): transient faults raise
`CardLookupTransient` (to be retried with nothing sent), a refused read key raises
`CardLookupRefused` carrying the proxy's outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from proxy.client import Outcome, ProxyResult

# The endpoints a reader needs (the billing run's read key and the agents' audit key allow them).
READ_ENDPOINTS: tuple[str, ...] = ("GET /v1/customers/*", "GET /v1/payment_methods")


class CardSource(StrEnum):
    """How the card of a charge was chosen."""

    EXPLICIT = "explicit"
    DEFAULT_PAYMENT_METHOD = "default_payment_method"
    DEFAULT_SOURCE = "default_source"
    ONLY_CARD = "only_card"


class CardCode(StrEnum):
    """Why a customer has no card to charge."""

    NO_PAYMENT_METHOD = "no_payment_method"
    CUSTOMER_DELETED = "customer_deleted"
    NO_SUCH_CUSTOMER = "no_such_customer"


@dataclass(frozen=True)
class CardChoice:
    """The card to charge (with how it was chosen), or the code and reason why there is none."""

    payment_method: str | None
    source: CardSource | None = None
    code: CardCode | None = None
    reason: str | None = None
    currency: str | None = None  # the customer's own currency, when the customer was read

    @property
    def found(self) -> bool:
        return self.payment_method is not None


class CardLookupTransient(RuntimeError):
    """Reading the customer hit a transient fault (retry; nothing was charged)."""


class CardLookupRefused(RuntimeError):
    """The proxy refused the read key (revoked, expired, forbidden): `outcome` says which."""

    def __init__(self, result: ProxyResult) -> None:
        super().__init__(f"{result.status} {result.code or ''}".strip())
        self.outcome = result.outcome
        self.result = result


class Reader(Protocol):
    """The part of `proxy.client.ProxyClient` the resolution uses."""

    def get(self, path: str, params: Any = None) -> ProxyResult: ...


def _text(value: Any) -> str | None:
    if isinstance(value, Mapping):  # an expanded object
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def no_card(code: CardCode, reason: str, currency: str | None = None) -> CardChoice:
    return CardChoice(None, None, code, reason, currency)


def from_customer(customer: Mapping[str, Any]) -> CardChoice:
    """Steps 2 and 3 from a customer object (as read or listed); code `no_payment_method` if neither is set."""
    currency = _text(customer.get("currency"))
    if customer.get("deleted"):
        return no_card(CardCode.CUSTOMER_DELETED, "the customer was deleted in Stripe")
    default_pm = _text((customer.get("invoice_settings") or {}).get("default_payment_method"))
    if default_pm:
        return CardChoice(default_pm, CardSource.DEFAULT_PAYMENT_METHOD, currency=currency)
    source = _text(customer.get("default_source"))
    if source:
        return CardChoice(source, CardSource.DEFAULT_SOURCE, currency=currency)
    return no_card(
        CardCode.NO_PAYMENT_METHOD,
        "the customer has no invoice_settings.default_payment_method, no default_source "
        "and not exactly one attached card",
        currency,
    )


def _checked(result: ProxyResult) -> ProxyResult:
    if result.outcome is Outcome.TRANSIENT:
        raise CardLookupTransient(f"{result.status} {result.code or ''}".strip())
    if result.outcome in (Outcome.REVOKED, Outcome.EXPIRED, Outcome.FORBIDDEN) or result.code == "vault_key_invalid":
        raise CardLookupRefused(result)
    return result


def only_card(reader: Reader, customer_id: str, currency: str | None = None) -> CardChoice:
    """Step 4: the customer's single attached card PaymentMethod, if there is exactly one.

    A key whose allowlist lacks `GET /v1/payment_methods` (an older audit key) skips the step.
    """
    answer = reader.get("/v1/payment_methods", {"customer": customer_id, "type": "card", "limit": 3})
    if answer.outcome is Outcome.FORBIDDEN:
        return no_card(CardCode.NO_PAYMENT_METHOD, "the customer has no default payment method (and this key may "
                       "not list its cards: allow GET /v1/payment_methods)", currency)
    listed = _checked(answer)
    cards = [pm for pm in (listed.body.get("data") or []) if isinstance(pm, Mapping) and _text(pm.get("id"))]
    if listed.outcome is Outcome.SUCCEEDED and len(cards) == 1:
        return CardChoice(str(cards[0]["id"]), CardSource.ONLY_CARD, currency=currency)
    detail = f"{len(cards)} attached cards and no default" if len(cards) > 1 else "no attached card"
    return no_card(CardCode.NO_PAYMENT_METHOD, f"the customer has no default payment method and {detail}", currency)


def resolve(reader: Reader, customer_id: str, explicit: str | None = None) -> CardChoice:
    """The card to charge `customer_id` with, in Stripe's order (module docstring)."""
    if explicit:
        return CardChoice(explicit, CardSource.EXPLICIT)
    answer = _checked(reader.get(f"/v1/customers/{customer_id}"))
    if answer.outcome is not Outcome.SUCCEEDED:
        if answer.status == 404:
            return no_card(CardCode.NO_SUCH_CUSTOMER, f"Stripe has no customer {customer_id}")
        return no_card(CardCode.NO_SUCH_CUSTOMER, f"the customer could not be read: {answer.code or answer.status}")
    return complete(reader, answer.body)


def complete(reader: Reader, customer: Mapping[str, Any]) -> CardChoice:
    """Steps 2-4 for a customer object already read (a listing gives steps 2-3 for free)."""
    choice = from_customer(customer)
    if choice.found or choice.code is not CardCode.NO_PAYMENT_METHOD:
        return choice
    return only_card(reader, str(customer["id"]), choice.currency)
