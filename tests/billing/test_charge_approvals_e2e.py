"""Issue 16, point 2 over HTTP: agent charges above a key's `approval_above_usd` wait for a person.

devhost runs the real app on Azurite and localstripe (the session's `app_stack`). Every assertion is
on real state: payment intents in localstripe (found by a metadata value of the test's own), the
approvals the API lists, the key's spend. The agent path goes through the real agent tools and
`POST /api/billing/charges`.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from agents.tools import BillingTools
from devhost.seed import create_customer, iter_objects
from tests.billing.e2e import unique_plan
from tests.conftest import STRIPE_TEST_SECRET, AppStack

pytestmark = pytest.mark.integration


def issue(stack: AppStack, cap: float, above: float, endpoints: list[str] | None = None) -> dict[str, Any]:
    resp = httpx.post(f"{stack.url}/api/vault/keys", headers=stack.admin_headers, timeout=30, json={
        "vendor": "stripe", "label": unique_plan("held"), "daily_usd_cap": cap, "approval_above_usd": above,
        "allowed_endpoints": endpoints or ["POST /v1/payment_intents"], "expires_in": "1h"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["approval_above_cents"] == int(above * 100)
    return dict(resp.json())


def charge(stack: AppStack, vault_key: str, idem: str, amount: int, tag: str) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/payment_intents", timeout=60, headers={
        "Authorization": f"Bearer {vault_key}", "Idempotency-Key": idem}, data={
        "amount": amount, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
        "metadata[test]": tag})


def intents(stack: AppStack, tag: str) -> list[dict[str, Any]]:
    return [pi for pi in iter_objects(stack.localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
            if (pi.get("metadata") or {}).get("test") == tag]


def pending(stack: AppStack) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{stack.url}/api/approvals", headers=stack.admin_headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return {a["id"]: a for a in resp.json()["data"]}


def decide(stack: AppStack, approval: str, what: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{stack.url}/api/approvals/{approval}/{what}", headers=stack.admin_headers, json=body or None,
                      timeout=30)


def test_a_charge_above_the_threshold_is_held_approved_then_forwarded_exactly_once(app_stack: AppStack) -> None:
    key = issue(app_stack, cap=500, above=50)
    tag, idem = uuid.uuid4().hex, f"order-{uuid.uuid4().hex[:8]}"

    small = charge(app_stack, key["vault_key"], f"small-{idem}", 2000, tag)  # at or below: charged at once
    assert small.status_code == 200, small.text

    held = charge(app_stack, key["vault_key"], idem, 9900, tag)
    assert held.status_code == 402 and held.headers["Stripe-Should-Retry"] == "false", held.text
    error = held.json()["error"]
    assert error["code"] == "approval_required" and error["type"] == "card_error"
    approval = error["approval"]
    again = charge(app_stack, key["vault_key"], idem, 9900, tag)
    assert again.status_code == 402 and again.json()["error"]["approval"] == approval
    assert len(intents(app_stack, tag)) == 1  # only the small one reached Stripe
    listed = pending(app_stack)[approval]
    assert listed["state"] == "pending" and listed["amount_cents"] == 9900 and listed["key_id"] == key["key_id"]
    assert "idempotency_key" not in listed

    ok = decide(app_stack, approval, "approve", approver="ops@example.com", reason="known customer")
    assert ok.status_code == 200 and ok.json()["state"] == "approved" and ok.json()["decided_by"] == "ops@example.com"
    twice = decide(app_stack, approval, "approve", approver="someone")
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "approval_not_pending"
    assert twice.json()["approval"]["state"] == "approved"
    assert approval not in pending(app_stack)

    with ThreadPoolExecutor(max_workers=8) as pool:  # the same request, 8 times at once
        answers = list(pool.map(lambda _: charge(app_stack, key["vault_key"], idem, 9900, tag), range(8)))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert any(a.status_code == 200 for a in answers)
    final = charge(app_stack, key["vault_key"], idem, 9900, tag)
    assert final.status_code == 200 and final.headers.get("Idempotent-Replayed") == "true"
    made = intents(app_stack, tag)
    assert sorted(pi["amount"] for pi in made) == [2000, 9900]  # forwarded exactly once

    other_body = charge(app_stack, key["vault_key"], idem, 9800, tag)
    assert other_body.status_code == 400 and other_body.json()["error"]["type"] == "idempotency_error"

    spent = httpx.get(f"{app_stack.url}/api/vault/keys/{key['key_id']}", headers=app_stack.admin_headers, timeout=30)
    assert spent.json()["spent_cents"] == 11900


def test_a_rejected_charge_is_never_forwarded_and_approval_never_raises_the_cap(app_stack: AppStack) -> None:
    key = issue(app_stack, cap=100, above=50)
    tag = uuid.uuid4().hex
    held = charge(app_stack, key["vault_key"], "reject-me", 6000, tag)
    approval = held.json()["error"]["approval"]
    assert decide(app_stack, approval, "reject", approver="ops", reason="not ours").status_code == 200
    refused = charge(app_stack, key["vault_key"], "reject-me", 6000, tag)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "approval_rejected"
    late = decide(app_stack, approval, "approve", approver="ops")
    assert late.status_code == 409 and late.json()["approval"]["state"] == "rejected"

    first = charge(app_stack, key["vault_key"], "big-1", 9000, tag)
    assert decide(app_stack, first.json()["error"]["approval"], "approve", approver="ops").status_code == 200
    assert charge(app_stack, key["vault_key"], "big-1", 9000, tag).status_code == 200
    second = charge(app_stack, key["vault_key"], "big-2", 9000, tag)
    assert decide(app_stack, second.json()["error"]["approval"], "approve", approver="ops").status_code == 200
    over = charge(app_stack, key["vault_key"], "big-2", 9000, tag)  # approved, but $90 + $90 > the $100 cap
    assert over.status_code == 402 and over.json()["error"]["code"] == "spend_cap_exceeded"
    assert [pi["amount"] for pi in intents(app_stack, tag)] == [9000]


def test_the_agent_tools_wait_for_approval_and_then_charge_once(app_stack: AppStack) -> None:
    plan = unique_plan("agent-held")
    with httpx.Client(base_url=app_stack.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
        customer = create_customer(client, name=f"{plan} 0", plan=plan)
    billing = issue(app_stack, cap=500, above=50)
    audit = issue(app_stack, cap=0.01, above=1000, endpoints=["GET /v1/customers/*", "GET /v1/payment_methods",
                                                             "GET /v1/payment_intents/*"])
    tools = BillingTools(f"{app_stack.url}/api/stripe", billing_key=billing["vault_key"],
                         audit_key=audit["vault_key"], backoff_seconds=0.05)
    with tools:
        first = json.loads(tools.charge_stripe(customer, 7500, "2026-08"))
        assert first["error"] == "approval_required" and first["retryable"] is False and first["stop"] is False
        approval = first["approval_id"]
        assert first["message"].startswith(f"waiting for approval {approval}; do not retry until approved")
        status = json.loads(tools.get_charge_status(approval))
        assert status["approval_state"] == "pending" and status["amount_cents"] == 7500
        assert status["customer_id"] == customer

        assert decide(app_stack, approval, "approve", approver="ops").status_code == 200
        assert json.loads(tools.get_charge_status(approval))["approval_state"] == "approved"
        charged = json.loads(tools.charge_stripe(customer, 7500, "2026-08"))
        assert charged["status"] == "succeeded" and charged["replayed"] is False, charged
        again = json.loads(tools.charge_stripe(customer, 7500, "2026-08"))
        assert again.get("replayed") is True or again.get("error") == "already_charged", again
    paid = [pi for pi in iter_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
            if pi.get("customer") == customer and pi.get("status") == "succeeded"]
    assert [pi["amount"] for pi in paid] == [7500]


def _stripe(stack: AppStack, path: str, **data: Any) -> dict[str, Any]:
    """Straight to localstripe with the real secret: an intent created outside the proxy."""
    resp = httpx.post(f"{stack.localstripe.url}{path}", data=data, timeout=30,
                      headers={"Authorization": f"Bearer {STRIPE_TEST_SECRET}"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _intent(stack: AppStack, intent_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{stack.localstripe.url}/v1/payment_intents/{intent_id}", timeout=30,
                     headers={"Authorization": f"Bearer {STRIPE_TEST_SECRET}"})
    return dict(resp.json())


def test_confirms_and_captures_above_the_threshold_are_held_and_refunds_are_not(app_stack: AppStack) -> None:
    key = issue(app_stack, cap=500, above=50, endpoints=[
        "POST /v1/payment_intents/*/confirm", "POST /v1/payment_intents/*/capture", "POST /v1/refunds"])
    auth = {"Authorization": f"Bearer {key['vault_key']}"}
    # created elsewhere (not through this key, so never held at creation): $99 waiting to be confirmed,
    # and $80 authorized and waiting to be captured
    to_confirm = _stripe(app_stack, "/v1/payment_intents", amount="9900", currency="usd", payment_method="pm_card_visa")
    to_capture = _stripe(app_stack, "/v1/payment_intents", amount="8000", currency="usd", payment_method="pm_card_visa",
                         capture_method="manual", confirm="true")
    assert (to_confirm["status"], to_capture["status"]) == ("requires_confirmation", "requires_capture")

    def post(path: str, idem: str, **data: str) -> httpx.Response:
        return httpx.post(f"{app_stack.url}{path}", headers={**auth, "Idempotency-Key": idem}, data=data, timeout=60)

    confirm_path = f"/v1/payment_intents/{to_confirm['id']}/confirm"
    capture_path = f"/v1/payment_intents/{to_capture['id']}/capture"
    held = [post(confirm_path, "confirm-1"), post(capture_path, "capture-1")]
    assert [r.status_code for r in held] == [402, 402], [r.text for r in held]
    assert all(r.json()["error"]["code"] == "approval_required" for r in held)
    assert all(r.headers.get("Stripe-Should-Retry") == "false" for r in held)
    # nothing moved: both intents are as they were
    assert _intent(app_stack, to_confirm["id"])["status"] == "requires_confirmation"
    assert _intent(app_stack, to_capture["id"])["status"] == "requires_capture"
    approvals = [r.json()["error"]["approval"] for r in held]
    waiting = pending(app_stack)
    assert {waiting[a]["amount_cents"] for a in approvals} == {9900, 8000}  # priced from Stripe
    assert {waiting[a]["path"] for a in approvals} == {confirm_path, capture_path}

    for a in approvals:
        assert decide(app_stack, a, "approve", approver="ops@example.com").status_code == 200
    done = [post(confirm_path, "confirm-1"), post(capture_path, "capture-1")]
    assert [r.status_code for r in done] == [200, 200], [r.text for r in done]
    assert _intent(app_stack, to_confirm["id"])["status"] == "succeeded"
    assert _intent(app_stack, to_capture["id"])["status"] == "succeeded"
    again = post(confirm_path, "confirm-1")  # a repeat replays: the intent is confirmed once
    assert again.status_code == 200 and again.json()["id"] == to_confirm["id"]

    # a refund returns money: $99 back, above the threshold, is not held
    refund = post("/v1/refunds", "refund-1", payment_intent=to_confirm["id"])
    assert refund.status_code == 200, refund.text
    assert refund.json()["amount"] == 9900
    spent = httpx.get(f"{app_stack.url}/api/vault/keys/{key['key_id']}", headers=app_stack.admin_headers,
                      timeout=30).json()
    # each reserved against the cap as any request: a refund too (docs/proxy.md), it just is not held
    assert spent["spent_cents"] == 9900 + 8000 + 9900


def test_the_approvals_list_pages_over_http(app_stack: AppStack) -> None:
    key = issue(app_stack, cap=500, above=5)
    held = []
    for n in range(3):
        resp = charge(app_stack, key["vault_key"], f"page-{uuid.uuid4().hex}-{n}", 900 + n, uuid.uuid4().hex)
        assert resp.status_code == 402
        held.append(resp.json()["error"]["approval"])
    assert decide(app_stack, held[0], "reject", approver="ops").status_code == 200

    def page(**params: Any) -> httpx.Response:
        return httpx.get(f"{app_stack.url}/api/approvals", params=params, headers=app_stack.admin_headers, timeout=30)

    seen, after = [], None
    while True:  # every pending approval of the session, one at a time, newest first
        body = page(limit=1, **({"starting_after": after} if after else {})).json()
        assert body["object"] == "list" and len(body["data"]) <= 1
        seen += [a["id"] for a in body["data"]]
        if not body["has_more"]:
            break
        after = body["data"][-1]["id"]
    assert held[2] in seen and held[1] in seen and held[0] not in seen
    assert seen.index(held[2]) < seen.index(held[1])  # newest first
    assert len(seen) == len(set(seen))
    rejected = page(state="rejected", limit=100).json()["data"]
    assert held[0] in [a["id"] for a in rejected]
    for bad in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"state": "done"}):
        resp = page(**bad)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "policy_invalid", resp.text
    missing = page(starting_after="apr_" + "0" * 32)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "starting_after"
