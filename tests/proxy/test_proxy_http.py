"""The proxy over real HTTP: devhost running function_app.py, Azurite and localstripe.

stripe-python talks to the proxy unchanged; state is checked where it lives (objects
in localstripe, counters and audit rows through the admin API, which reads Azurite).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
import stripe

from tests.conftest import AppStack
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(app_stack: AppStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_stack.url, timeout=60, limits=httpx.Limits(max_connections=80)) as client:
        yield client


def issue(http: httpx.Client, stack: AppStack, **overrides: Any) -> dict[str, Any]:
    resp = http.post("/api/vault/keys", json=key_request(**overrides), headers=stack.admin_headers)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def describe(http: httpx.Client, stack: AppStack, key_id: str) -> dict[str, Any]:
    resp = http.get(f"/api/vault/keys/{key_id}", headers=stack.admin_headers)
    assert resp.status_code == 200
    return dict(resp.json())


def audit(http: httpx.Client, stack: AppStack, key_id: str) -> list[dict[str, Any]]:
    rows, token = [], None
    while True:
        params = {"limit": 200, **({"continuation": token} if token else {})}
        page = http.get(f"/api/vault/keys/{key_id}/audit", params=params, headers=stack.admin_headers).json()
        rows += page["data"]
        token = page["continuation"]
        if not token:
            return rows


def stripe_client(stack: AppStack, vault_key: str) -> stripe.StripeClient:
    return stripe.StripeClient(vault_key, base_addresses={"api": f"{stack.url}/api/stripe"}, max_network_retries=3)


def post_charge(http: httpx.Client, vault_key: str, params: dict[str, str], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {vault_key}"}
    if key:
        headers["Idempotency-Key"] = key
    return http.post("/api/stripe/v1/payment_intents", data=params, headers=headers)


# --- stripe-python, unchanged ------------------------------------------------------------
def test_stripe_python_creates_and_retrieves_through_the_proxy(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack)
    tag = new_tag()
    client = stripe_client(app_stack, k["vault_key"])
    pi = client.v1.payment_intents.create(params={
        "amount": 2900, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa",
        "metadata": {"test_tag": tag, "plan": "pro"}})
    assert pi.status == "succeeded" and pi.metadata["plan"] == "pro"
    assert client.v1.payment_intents.retrieve(pi.id).amount == 2900
    assert [o["id"] for o in tagged_objects(app_stack.localstripe.url, tag)] == [pi.id]
    view = describe(http, app_stack, k["key_id"])
    assert (view["spent_cents"], view["pending_cents"], view["remaining_cents"]) == (2900, 0, 47100)


def test_stripe_python_gets_card_error_once_for_a_spent_cap(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack, daily_usd_cap=10)
    client = stripe_client(app_stack, k["vault_key"])
    with pytest.raises(stripe.CardError) as err:
        client.v1.payment_intents.create(params={"amount": 1001, "currency": "usd", "confirm": True,
                                                 "payment_method": "pm_card_visa"})
    assert err.value.code == "spend_cap_exceeded" and err.value.http_status == 402
    rows = audit(http, app_stack, k["key_id"])
    assert [r["decision"] for r in rows] == ["spend_cap_exceeded"]  # exactly one request, no retries


def test_stripe_python_permission_and_authentication_errors(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack)
    client = stripe_client(app_stack, k["vault_key"])
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.list()
    assert http.delete(f"/api/vault/keys/{k['key_id']}", headers=app_stack.admin_headers).status_code == 200
    with pytest.raises(stripe.AuthenticationError) as err:
        client.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    assert err.value.json_body["error"]["code"] == "vault_key_revoked"
    with pytest.raises(stripe.AuthenticationError):
        # Another last character (a key that already ends in Z would be the key itself: 1 run in 62).
        wrong = k["vault_key"][:-1] + ("Y" if k["vault_key"].endswith("Z") else "Z")
        stripe_client(app_stack, wrong).v1.payment_intents.list()
    assert [r["decision"] for r in audit(http, app_stack, k["key_id"])] == ["vault_key_revoked", "endpoint_not_allowed"]


def test_idempotency_error_for_different_parameters(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack)
    tag = new_tag()
    client = stripe_client(app_stack, k["vault_key"])
    client.v1.payment_intents.create(params=pi_params(500, tag), options={"idempotency_key": "same"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(params=pi_params(600, tag), options={"idempotency_key": "same"})
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == 1


# --- no overspend ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cap_usd", "amount", "callers", "expected_ok"),
    [(290, 2900, 64, 10), (100, 700, 24, 14), (50, 1300, 16, 3), (1, 100, 8, 1)],
)
def test_concurrent_charges_never_exceed_the_cap(
    http: httpx.Client, app_stack: AppStack, cap_usd: int, amount: int, callers: int, expected_ok: int
) -> None:
    k = issue(http, app_stack, daily_usd_cap=cap_usd)
    tag = new_tag()
    start = threading.Barrier(callers)
    retryable: list[int] = []

    def one(i: int) -> int:
        start.wait()
        for _ in range(20):  # a retryable 503/409 is retried with the same key, as clients do
            r = post_charge(http, k["vault_key"], pi_params(amount, tag), key=f"{tag}-{i}")
            if r.status_code not in (409, 503):
                return r.status_code
            retryable.append(r.status_code)
            time.sleep(0.2)
        return r.status_code

    with ThreadPoolExecutor(callers) as pool:
        statuses = list(pool.map(one, range(callers)))
    assert statuses.count(200) == expected_ok and statuses.count(402) == callers - expected_ok
    assert retryable == []  # contention is the ledger's problem (group commit), never the caller's
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == expected_ok
    view = describe(http, app_stack, k["key_id"])
    assert view["spent_cents"] == expected_ok * amount <= cap_usd * 100 and view["pending_cents"] == 0


# --- exactly once ----------------------------------------------------------------------
def test_same_key_sequentially_and_concurrently_creates_one_object(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack)
    tag = new_tag()
    ids = [post_charge(http, k["vault_key"], pi_params(1200, tag), key="seq").json()["id"] for _ in range(5)]
    assert len(set(ids)) == 1

    start = threading.Barrier(16)

    def one(_: int) -> tuple[int, str | None, bool]:
        start.wait()
        while True:
            r = post_charge(http, k["vault_key"], pi_params(1300, tag), key="conc")
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "idempotency_key_in_use"
                assert r.headers["Stripe-Should-Retry"] == "true"
                time.sleep(0.1)
                continue
            return r.status_code, r.json().get("id"), r.headers.get("Idempotent-Replayed") == "true"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert {s for s, _, _ in results} == {200} and len({i for _, i, _ in results}) == 1
    assert sum(1 for *_, replayed in results if not replayed) == 1
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == 2  # one per idempotency key
    assert describe(http, app_stack, k["key_id"])["spent_cents"] == 2500


# --- stop means stop -------------------------------------------------------------------
def test_nothing_is_forwarded_after_a_revoke_returns(http: httpx.Client, app_stack: AppStack) -> None:
    k = issue(http, app_stack, daily_usd_cap=100000)
    tag = new_tag()
    stop = threading.Event()
    revoke_returned: list[float] = []
    after: list[tuple[int, str]] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def hammer() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter)
            started = time.time()
            if n % 3 == 0:
                r = http.get("/api/stripe/v1/payment_intents?limit=1", headers={"Authorization": f"Bearer {k['vault_key']}"})
            else:
                r = post_charge(http, k["vault_key"], pi_params(100, tag), key=f"{tag}-{n}")
            if revoke_returned and started > revoke_returned[0]:
                after.append((r.status_code, r.json().get("error", {}).get("code")))

    threads = [threading.Thread(target=hammer) for _ in range(32)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    resp = http.delete(f"/api/vault/keys/{k['key_id']}", headers=app_stack.admin_headers)
    revoke_returned.append(time.time())
    assert resp.status_code == 200 and resp.json()["status"] == "revoked"
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert after and set(after) == {(401, "vault_key_revoked")}
    rows = audit(http, app_stack, k["key_id"])
    forwarded = [r for r in rows if r["decision"] == "forwarded"]
    assert forwarded, "the hammer should have got some requests through before the revoke"
    cutoff = revoke_returned[0]
    assert all(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() < cutoff for r in forwarded)
    posts = [r for r in forwarded if r["method"] == "POST"]
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == len(posts)
    assert sum(1 for r in rows if r["decision"] == "vault_key_revoked") >= len(after)
