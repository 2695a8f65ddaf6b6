"""Unfinished payment intents are held pending, not settled (issue 19, point 5; stretch of issue 13).

On Azurite + localstripe: card 4000002500003155 leaves a confirmed intent in
`requires_action` (3-D Secure), which the customer may complete outside the proxy.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy import idempotency as idem
from proxy.holds import is_held
from proxy.store import IdemRecord
from proxy.vault import VaultService
from tests.conftest import STRIPE_TEST_SECRET
from tests.proxy.conftest import Domain, key_request, new_tag, pi_params, tagged_objects
from tests.proxy.test_money_holes import post, view

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {STRIPE_TEST_SECRET}"}
ENDPOINTS = ["POST /v1/payment_intents", "POST /v1/payment_intents/*/cancel", "GET /v1/payment_intents/*"]


def three_d_secure_card(domain: Domain) -> str:
    pm = domain.stripe_http.post("/v1/payment_methods", headers=AUTH, data={
        "type": "card", "card[number]": "4000002500003155", "card[exp_month]": "12", "card[exp_year]": "2030",
        "card[cvc]": "123"}).json()
    return str(pm["id"])


def held_charge(domain: Domain, k: dict[str, Any], amount: int, tag: str, key: str) -> dict[str, Any]:
    r = post(domain.deps, k["vault_key"], "/v1/payment_intents",
             pi_params(amount, tag, payment_method=three_d_secure_card(domain)), key=key)
    assert r.status == 200 and r.json()["status"] == "requires_action"
    return r.json()


def test_requires_action_is_held_and_a_cancel_through_the_proxy_releases_it(domain: Domain) -> None:
    k = domain.vault.issue(key_request(daily_usd_cap=30, allowed_endpoints=ENDPOINTS))
    tag = new_tag()
    pi = held_charge(domain, k, 2000, tag, "3ds-1")
    assert view(domain, k["key_id"]) == (0, 2000)  # not spent, but counting against the cap
    record = domain.deps.store.read_idem(k["key_id"], idem.idem_row("3ds-1"))
    assert record is not None and record.state == "completed" and record.held
    over = post(domain.deps, k["vault_key"], "/v1/payment_intents", pi_params(1500, tag, **{"metadata[n]": "2"}))
    assert over.status == 402
    replay = post(domain.deps, k["vault_key"], "/v1/payment_intents",
                  pi_params(2000, tag, payment_method=pi["payment_method"]), key="3ds-1")
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json()["id"] == pi["id"]
    cancel = post(domain.deps, k["vault_key"], f"/v1/payment_intents/{pi['id']}/cancel", "")
    assert cancel.status == 200 and cancel.json()["status"] == "canceled"
    assert view(domain, k["key_id"]) == (0, 0)
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1


def test_a_held_intent_completed_outside_the_proxy_is_settled_by_reconcile(domain: Domain) -> None:
    k = domain.vault.issue(key_request(daily_usd_cap=50, allowed_endpoints=ENDPOINTS))
    pi = held_charge(domain, k, 2500, new_tag(), "3ds-2")
    still = domain.vault.reconcile(k["key_id"])["resolved"]
    assert [(r["object_id"], r["outcome"]) for r in still] == [(pi["id"], "pending")]
    assert view(domain, k["key_id"]) == (0, 2500)
    # The customer completes 3-D Secure with the client secret (localstripe's stand-in for Stripe.js).
    done = domain.stripe_http.post(f"/v1/payment_intents/{pi['id']}/_authenticate", headers=AUTH,
                                   data={"client_secret": pi["client_secret"], "success": "true"}).json()
    assert done["status"] == "succeeded"
    assert [r["outcome"] for r in domain.vault.reconcile(k["key_id"])["resolved"]] == ["settled"]
    assert view(domain, k["key_id"]) == (2500, 0)
    assert domain.vault.reconcile(k["key_id"])["resolved"] == []  # nothing left held


def test_one_keys_cancel_never_releases_anothers_hold(domain: Domain) -> None:
    a = domain.vault.issue(key_request(allowed_endpoints=ENDPOINTS))
    b = domain.vault.issue(key_request(allowed_endpoints=ENDPOINTS))
    pi = held_charge(domain, a, 1200, new_tag(), "3ds-3")
    assert post(domain.deps, b["vault_key"], f"/v1/payment_intents/{pi['id']}/cancel", "").status == 200
    assert view(domain, a["key_id"]) == (0, 1200)  # still held for A; its reconcile will release it
    outcomes = VaultService(domain.tables, domain.settings, stripe_http=domain.stripe_http).reconcile(a["key_id"])
    assert [r["outcome"] for r in outcomes["resolved"]] == ["released"]
    assert view(domain, a["key_id"]) == (0, 0)


@pytest.mark.parametrize(("status", "held"), [
    ("requires_action", True), ("requires_payment_method", True), ("processing", True),
    ("succeeded", False), ("requires_capture", False), ("canceled", False)])
def test_which_statuses_are_held(status: str, held: bool) -> None:
    record = IdemRecord("k", "i", "in_flight", "f", "POST", "/v1/payment_intents", "body", 100, "d",
                        None, None, None, "fk")  # type: ignore[arg-type]
    assert is_held(record, f'{{"object": "payment_intent", "status": "{status}"}}') is held
    assert not is_held(record, '{"object": "charge", "status": "pending"}')
