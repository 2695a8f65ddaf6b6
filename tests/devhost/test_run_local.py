"""`make run`'s pieces that can run beside the suite (the full script uses fixed ports; see README)."""

from __future__ import annotations

import pytest

from devhost.seed import find_customers
from devhost.services import start_localstripe
from scripts.run_local import DEMO_CUSTOMERS, DEMO_METADATA, banner, ensure_demo_customers
from tests.conftest import STRIPE_TEST_SECRET

pytestmark = pytest.mark.integration


def test_demo_customers_are_seeded_once() -> None:
    # Its own localstripe: five "pro" customers must not leak into other tests' shared one.
    with start_localstripe() as localstripe:
        _check_seeding(localstripe.url)


def _check_seeding(url: str) -> None:
    first = ensure_demo_customers(url, STRIPE_TEST_SECRET)
    again = ensure_demo_customers(url, STRIPE_TEST_SECRET)
    assert len(first) == DEMO_CUSTOMERS
    assert sorted(again) == sorted(first)
    stored = find_customers(url, STRIPE_TEST_SECRET, DEMO_METADATA)
    assert sorted(str(c["id"]) for c in stored) == sorted(first)
    assert {c["metadata"]["plan"] for c in stored} == {"pro"}  # type: ignore[index]
    assert all(c.get("default_source") or c.get("sources") for c in stored)  # chargeable: a card is attached


def test_banner_shows_ports_key_and_curl_node_and_python_examples() -> None:
    text = banner(host_kind="devhost", azurite="started", stripe="started", customers=["cus_1"], key="k-123")
    for needle in (":7071", ":10000", ":10001", ":10002", ":8420", "k-123", "/api/vault/keys", "payment_intents",
                   "localhost:7071/v1/payment_intents",  # the proxy at Stripe's own paths, the host's root
                   "new Stripe(process.env.VK, {host: 'localhost', port: 7071, protocol: 'http'})",
                   "stripe.StripeClient(os.environ['VK'], base_addresses={'api': 'http://localhost:7071'})"):
        assert needle in text
    assert "sk_test" not in text  # the Stripe secret is never printed
