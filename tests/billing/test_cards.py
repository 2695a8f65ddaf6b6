"""One card resolution for runs and agent tools, over the real ProxyClient faked at the transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from billing import cards
from billing.cards import CardCode, CardSource
from proxy.client import ProxyClient

CUSTOMERS: dict[str, dict[str, Any]] = {
    "cus_modern": {"id": "cus_modern", "invoice_settings": {"default_payment_method": "pm_default"},
                   "default_source": "card_legacy", "currency": "usd"},
    "cus_legacy": {"id": "cus_legacy", "invoice_settings": {"default_payment_method": None},
                   "default_source": "card_legacy", "currency": "eur"},
    "cus_one": {"id": "cus_one", "invoice_settings": {}, "default_source": None},
    "cus_two": {"id": "cus_two", "invoice_settings": {}, "default_source": None},
    "cus_deleted": {"id": "cus_deleted", "object": "customer", "deleted": True},  # Stripe's 200 for a deleted one
}
CARDS = {"cus_one": ["pm_only"], "cus_two": ["pm_a", "pm_b"]}


def stripe_like(req: httpx.Request) -> httpx.Response:
    path = req.url.path.removeprefix("/api/stripe")
    if path == "/v1/payment_methods":
        customer = parse_qs(urlsplit(str(req.url)).query)["customer"][0]
        return httpx.Response(200, json={"data": [{"id": pm} for pm in CARDS.get(customer, [])], "has_more": False})
    customer = CUSTOMERS.get(path.rsplit("/", 1)[1])
    if customer is None:
        return httpx.Response(404, json={"error": {"type": "invalid_request_error", "code": "resource_missing"}})
    return httpx.Response(200, json=customer)


def reader(handler: Callable[[httpx.Request], httpx.Response] = stripe_like) -> ProxyClient:
    return ProxyClient("http://proxy.test/api/stripe", "vk_r", http=httpx.Client(transport=httpx.MockTransport(handler)),
                       max_retries=0)


@pytest.mark.parametrize(
    ("customer", "explicit", "card", "source", "code"),
    [
        ("cus_modern", "pm_given", "pm_given", CardSource.EXPLICIT, None),
        ("cus_modern", None, "pm_default", CardSource.DEFAULT_PAYMENT_METHOD, None),
        ("cus_legacy", None, "card_legacy", CardSource.DEFAULT_SOURCE, None),
        ("cus_one", None, "pm_only", CardSource.ONLY_CARD, None),
        ("cus_two", None, None, None, CardCode.NO_PAYMENT_METHOD),
        ("cus_deleted", None, None, None, CardCode.CUSTOMER_DELETED),
        ("cus_nobody", None, None, None, CardCode.NO_SUCH_CUSTOMER),
    ],
)
def test_stripes_order(customer: str, explicit: str | None, card: str | None, source: CardSource | None,
                       code: CardCode | None) -> None:
    choice = cards.resolve(reader(), customer, explicit)
    assert (choice.payment_method, choice.source, choice.code) == (card, source, code)


def test_the_customers_currency_is_kept_for_the_warnings() -> None:
    assert cards.resolve(reader(), "cus_legacy").currency == "eur"


def test_a_key_that_may_not_list_cards_skips_the_fourth_step() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/v1/payment_methods"):
            return httpx.Response(403, json={"error": {"code": "endpoint_not_allowed"}})
        return stripe_like(req)

    choice = cards.resolve(reader(handler), "cus_one")
    assert (choice.payment_method, choice.code) == (None, CardCode.NO_PAYMENT_METHOD)
    assert "GET /v1/payment_methods" in str(choice.reason)


def test_transient_faults_raise_and_a_refused_key_says_why() -> None:
    with pytest.raises(cards.CardLookupTransient):
        cards.resolve(reader(lambda req: httpx.Response(502, json={})), "cus_modern")
    with pytest.raises(cards.CardLookupRefused) as refused:
        cards.resolve(reader(lambda req: httpx.Response(401, json={"error": {"code": "vault_key_revoked"}})), "cus_x")
    assert refused.value.outcome == "revoked"
