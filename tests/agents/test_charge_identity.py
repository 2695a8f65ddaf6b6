"""Issue 15: one charge identity end to end, across keys; invoices that exist; messages naming the right key.

Real proxy on devhost (Azurite + localstripe); assertions count payment intents in localstripe.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from devhost.seed import DECLINING_CARD, GOOD_CARD, card_payment_method, create_customer
from proxy.client import ProxyClient
from tests.agents.conftest import AgentStack
from tests.conftest import STRIPE_TEST_SECRET

pytestmark = pytest.mark.integration


@pytest.fixture
def stripe(stack: AgentStack) -> Iterator[httpx.Client]:
    """localstripe itself, as the customer's own integration would change it."""
    with httpx.Client(base_url=stack.app.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
        yield client


def new_default_card(stripe: httpx.Client, customer: str, card: str = GOOD_CARD) -> str:
    """The customer fixes their card: a new PaymentMethod becomes the default."""
    pm = card_payment_method(stripe, card)
    stripe.post(f"/v1/payment_methods/{pm}/attach", data={"customer": customer}).raise_for_status()
    stripe.post(f"/v1/customers/{customer}", data={"invoice_settings[default_payment_method]": pm}).raise_for_status()
    return pm


def test_a_repeat_after_the_card_changed_says_already_charged(stack: AgentStack, stripe: httpx.Client) -> None:
    """Point 1: the card is not part of the charge identity (it was: idempotency_error, "Nothing was charged")."""
    customer = stack.new_customer()
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    first = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))
    assert first["status"] == "succeeded"
    new_default_card(stripe, customer)

    again = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))

    assert again["error"] == "already_charged" and again["charge_id"] == first["charge_id"]
    assert again["message"].startswith(f"already charged: {first['charge_id']}")
    [intent] = stack.payment_intents(customer)
    assert intent["metadata"]["charge_identity"].startswith("sg-charge-v2-")  # the identity is on the payment


def test_a_plain_repeat_also_says_already_charged(stack: AgentStack) -> None:
    customer = stack.new_customer()
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    first = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))
    again = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))
    assert again["replayed"] is True and again["charge_id"] == first["charge_id"]
    assert again["message"].startswith(f"already charged: {first['charge_id']}")


def test_a_declined_charge_can_be_made_once_the_card_is_fixed(stack: AgentStack, stripe: httpx.Client) -> None:
    """Point 1: a stored decline used to replay for 30 days (then idempotency_error once the card changed)."""
    customer = create_customer(stripe, name=f"Declines {uuid.uuid4().hex[:6]}", card=DECLINING_CARD)
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    declined = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))
    assert declined["error"] == "card_declined" and "new card" in declined["message"]
    before = len(stack.payment_intents(customer))
    # The same card again: the decline is replayed, the card is not tried again.
    assert json.loads(tools.charge_stripe(customer, 2900, "2026-06"))["error"] == "card_declined"
    assert len(stack.payment_intents(customer)) == before

    new_default_card(stripe, customer)
    paid = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))

    assert paid["status"] == "succeeded" and paid["replayed"] is False
    assert [pi["status"] for pi in stack.payment_intents(customer)].count("succeeded") == 1
    assert json.loads(tools.charge_stripe(customer, 2900, "2026-06"))["charge_id"] == paid["charge_id"]


def test_two_billing_keys_bill_a_period_once(stack: AgentStack) -> None:
    """Point 2: a rotated key, or a second billing agent, finds the charge identity the first one claimed.

    This is the claims table of issue 19 (billing/claims.py) at work: the proxy alone deduplicates
    per vault key, as the direct POST at the end shows (it is a new charge).
    """
    customer = stack.new_customer()
    audit = stack.audit_key()
    old_key, new_key = stack.billing_key(), stack.billing_key()
    first = json.loads(stack.tools(billing=old_key, audit=audit).charge_stripe(customer, 2900, "2026-06"))

    second_agent = stack.tools(billing=new_key, audit=audit)
    again = json.loads(second_agent.charge_stripe(customer, 2900, "2026-06"))
    other_amount = json.loads(second_agent.charge_stripe(customer, 3100, "2026-06"))

    for answer in (again, other_amount):
        assert answer["error"] == "already_charged" and answer["charge_id"] == first["charge_id"]
        assert answer["message"].startswith(f"already charged: {first['charge_id']}")
    assert len(stack.payment_intents(customer)) == 1
    # Without the claim: the same form and key straight to the proxy with the new vault key charges again.
    [intent] = stack.payment_intents(customer)
    form = {"customer": customer, "amount": 2900, "currency": "usd", "payment_method": intent["payment_method"],
            "confirm": "true", "off_session": "true",
            "metadata": {k: v for k, v in intent["metadata"].items() if k != "spendgate_idem"}}  # the proxy's marker
    with ProxyClient(stack.proxy_url, new_key["vault_key"]) as proxy:
        direct = proxy.post("/v1/payment_intents", form, idempotency_key=first["idempotency_key"])
    assert direct.object_id not in (None, first["charge_id"]) and len(stack.payment_intents(customer)) == 2


def test_an_invoice_id_must_be_an_existing_invoice_of_the_customer(stack: AgentStack, stripe: httpx.Client) -> None:
    """Point 5: invented invoice ids (each a new identity, so a new charge) are refused with a GET."""
    customer, other = stack.new_customer(), stack.new_customer()
    invoice = stack.new_invoice(customer)
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    paid_by_subscription = len(stack.payment_intents(customer))

    invented = json.loads(tools.charge_stripe(customer, 2900, "2026-06", "in_1Invented000"))
    assert invented["error"] == "invalid_arguments" and "No invoice in_1Invented000" in invented["message"]
    not_theirs = json.loads(tools.charge_stripe(other, 2900, "2026-06", invoice))
    assert not_theirs["error"] == "invalid_arguments" and "does not belong" in not_theirs["message"]
    assert len(stack.payment_intents(customer)) == paid_by_subscription and stack.payment_intents(other) == []

    paid = json.loads(tools.charge_stripe(customer, 2900, "2026-06", invoice))
    assert paid["status"] == "succeeded" and paid["invoice_id"] == invoice
    assert len(stack.payment_intents(customer)) == paid_by_subscription + 1


def test_a_revoked_audit_key_is_named_as_the_audit_key(stack: AgentStack) -> None:
    """Point 6: it used to say "STOP: this agent's billing key has been revoked" (operators rotated the wrong key)."""
    customer = stack.new_customer()
    billing, audit = stack.billing_key(), stack.audit_key()
    stack.revoke(audit["key_id"])
    tools = stack.tools(billing=billing, audit=audit)

    out = json.loads(tools.charge_stripe(customer, 2900, "2026-06"))
    assert out["error"] == "vault_key_revoked" and out["stop"] is True and out["vault_key"] == "audit"
    assert "audit (lookup) key has been revoked" in out["message"] and "billing key is not the problem" in out["message"]
    lookup = json.loads(tools.list_customer_charges(customer))
    assert lookup["stop"] is False and lookup["vault_key"] == "audit" and "audit (lookup) key has been revoked" in lookup["message"]
    assert stack.payment_intents(customer) == []
    # The billing key's own revocation still names the billing key.
    stack.revoke(billing["key_id"])
    fresh_audit = stack.audit_key()
    own = json.loads(stack.tools(billing=billing, audit=fresh_audit).charge_stripe(customer, 2900, "2026-06"))
    assert own["vault_key"] == "billing" and own["message"].startswith("STOP: this agent's billing key has been revoked")
