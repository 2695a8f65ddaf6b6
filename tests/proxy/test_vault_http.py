"""The vault admin API and ProxyClient over real HTTP (devhost + Azurite + localstripe)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy.client import Outcome, ProxyClient
from tests.conftest import AppStack
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(app_stack: AppStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_stack.url, headers=app_stack.admin_headers, timeout=30) as client:
        yield client


def test_issue_describe_list_revoke_and_spend(admin: httpx.Client, app_stack: AppStack) -> None:
    label = f"azure-durable/{new_tag()}"
    issued = [admin.post("/api/vault/keys", json=key_request(label=label, total_usd_cap=1000, metadata={"run": "r1"}))
              for _ in range(3)]
    assert [r.status_code for r in issued] == [201, 201, 201]
    first = issued[0].json()
    assert first["vault_key"].startswith(f"vk_{first['key_id']}_") and first["status"] == "active"
    assert (first["daily_cap_cents"], first["total_cap_cents"], first["remaining_cents"]) == (50000, 100000, 50000)

    view = admin.get(f"/api/vault/keys/{first['key_id']}").json()
    assert "vault_key" not in view and "secret_hash" not in view and view["metadata"] == {"run": "r1"}
    assert first["vault_key"].split("_")[2] not in admin.get(f"/api/vault/keys/{first['key_id']}").text

    page1 = admin.get("/api/vault/keys", params={"label": label, "limit": 2}).json()
    assert len(page1["data"]) == 2 and page1["continuation"]
    page2 = admin.get("/api/vault/keys", params={"label": label, "limit": 2, "continuation": page1["continuation"]}).json()
    ids = {k["key_id"] for k in page1["data"] + page2["data"]}
    assert ids == {r.json()["key_id"] for r in issued} and page2["continuation"] is None

    tag = new_tag()
    with ProxyClient(f"{app_stack.url}/api/stripe", first["vault_key"]) as proxy:
        assert proxy.post("/v1/payment_intents", pi_params(2900, tag), idempotency_key="a").outcome is Outcome.SUCCEEDED
        assert proxy.post("/v1/payment_intents", pi_params(2900, tag), idempotency_key="a").replayed
        assert proxy.get("/v1/customers").outcome is Outcome.FORBIDDEN

    spend = admin.get("/api/spend", params={"label": label}).json()
    assert (spend["spent_cents"], spend["pending_cents"]) == (2900, 0)
    assert spend["requests_by_decision"] == {"forwarded": 1, "replayed": 1, "endpoint_not_allowed": 1}
    assert len(spend["keys"]) == 3

    audit = admin.get(f"/api/vault/keys/{first['key_id']}/audit", params={"limit": 2}).json()
    assert [r["decision"] for r in audit["data"]] == ["endpoint_not_allowed", "replayed"] and audit["continuation"]
    rest = admin.get(f"/api/vault/keys/{first['key_id']}/audit", params={"continuation": audit["continuation"]}).json()
    [row] = rest["data"]
    assert row["decision"] == "forwarded" and row["amount"] == 2900 and row["currency"] == "usd"
    assert row["stripe_object_id"] == tagged_objects(app_stack.localstripe.url, tag)[0]["id"]
    assert row["upstream_status"] == 200 and row["idempotency_key"] == "a" and row["label"] == label

    revoked = admin.delete(f"/api/vault/keys/{first['key_id']}")
    again = admin.delete(f"/api/vault/keys/{first['key_id']}")
    assert revoked.status_code == again.status_code == 200
    assert revoked.json() == again.json() and revoked.json()["status"] == "revoked"
    assert admin.get(f"/api/vault/keys/{first['key_id']}").json()["status"] == "revoked"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/vault/keys", {"vendor": "stripe"}, 400, "policy_invalid"),
        ("POST", "/api/vault/keys", key_request(allowed_endpoints=["POST /v1/transfers"]), 400, "policy_invalid"),
        ("GET", "/api/vault/keys/0000000000000000ffff", None, 404, "not_found"),
        ("GET", "/api/vault/keys/not-a-key", None, 404, "not_found"),
        ("DELETE", "/api/vault/keys/0000000000000000ffff", None, 404, "not_found"),
        ("GET", "/api/vault/keys?limit=abc", None, 400, "policy_invalid"),
        ("GET", "/api/vault/keys?limit=0", None, 400, "policy_invalid"),
        ("GET", "/api/vault/keys?continuation=WyJ4Il0=", None, 400, "policy_invalid"),  # base64 of ["x"]
        ("GET", "/api/vault/keys?continuation=NQ==", None, 400, "policy_invalid"),  # base64 of 5
        ("GET", "/api/vault/keys?continuation=%%%", None, 400, "policy_invalid"),
        ("GET", "/api/spend", None, 400, "policy_invalid"),
    ],
)
def test_admin_errors(admin: httpx.Client, method: str, path: str, body: Any, status: int, code: str) -> None:
    r = admin.request(method, path, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert r.headers["Stripe-Should-Retry"] == "false"


def test_admin_routes_need_the_function_key(app_stack: AppStack) -> None:
    assert httpx.post(f"{app_stack.url}/api/vault/keys", json=key_request()).status_code == 401
    assert httpx.get(f"{app_stack.url}/api/spend?label=x").status_code == 401


def test_proxy_client_outcomes_against_the_real_proxy(admin: httpx.Client, app_stack: AppStack) -> None:
    k = admin.post("/api/vault/keys", json=key_request(daily_usd_cap=30)).json()
    tag = new_tag()
    with ProxyClient(f"{app_stack.url}/api/stripe", k["vault_key"]) as proxy:
        ok = proxy.post("/v1/payment_intents", {"amount": 2900, "currency": "usd", "confirm": True,
                                                "payment_method": "pm_card_visa", "metadata": {"test_tag": tag}})
        assert ok.outcome is Outcome.SUCCEEDED and ok.object_id and ok.body["metadata"]["test_tag"] == tag
        assert proxy.get(f"/v1/payment_intents/{ok.object_id}").body["amount"] == 2900
        capped = proxy.post("/v1/payment_intents", pi_params(200, tag), idempotency_key="c")
        assert (capped.outcome, capped.code, capped.status) == (Outcome.CAP_EXCEEDED, "spend_cap_exceeded", 402)
        bad = proxy.post("/v1/payment_intents", {"amount": 5, "currency": "eur"})
        assert (bad.outcome, bad.code) == (Outcome.INVALID, "currency_not_allowed")
        admin.delete(f"/api/vault/keys/{k['key_id']}")
        assert proxy.post("/v1/payment_intents", pi_params(100, tag)).outcome is Outcome.REVOKED
    with ProxyClient(f"{app_stack.url}/api/stripe", k["vault_key"][:-3] + "xyz") as forged:
        assert forged.get("/v1/payment_intents").outcome is Outcome.INVALID
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == 1
