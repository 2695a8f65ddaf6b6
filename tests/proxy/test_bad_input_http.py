"""Bad input over real HTTP: every case gets a clear 4xx and changes nothing.

Nothing here may answer 5xx, move the key's counters, create an idempotency record
that blocks a later good request, or create anything in localstripe.
"""

from __future__ import annotations

import base64
import http.client as httplib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.errors import SpendgateError
from devhost.seed import count_objects
from proxy.stripe_request import MAX_BODY_BYTES, build_request, parse_params
from tests.conftest import STRIPE_TEST_SECRET, AppStack
from tests.proxy.conftest import key_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(app_stack: AppStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_stack.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def key(http: httpx.Client, app_stack: AppStack) -> dict[str, Any]:
    resp = http.post("/api/vault/keys", json=key_request(daily_usd_cap=100), headers=app_stack.admin_headers)
    return dict(resp.json())


def raw_request(app_stack: AppStack, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    """Send the request line exactly as given (httpx would normalise `..` away)."""
    parts = urlsplit(app_stack.url)
    conn = httplib.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(payload)
    except ValueError:
        return resp.status, {}


def state(http: httpx.Client, app_stack: AppStack, key_id: str) -> tuple[int, int, int, int]:
    view = http.get(f"/api/vault/keys/{key_id}", headers=app_stack.admin_headers).json()
    return (view["spent_cents"], view["pending_cents"], view["total_spent_cents"],
            count_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, "payment_intents"))


GOOD = "amount=100&currency=usd&confirm=true&payment_method=pm_card_visa"
FORM = "application/x-www-form-urlencoded"


def cases(vault_key: str) -> list[tuple[str, str, dict[str, str], bytes, int, str]]:
    auth = {"Authorization": f"Bearer {vault_key}"}
    key_id = vault_key.split("_")[1]
    forged = f"vk_{key_id}_" + "A" * 48
    unknown = "vk_" + "0" * 20 + "_" + "B" * 48
    basic_forged = base64.b64encode(f"{forged}:".encode()).decode()
    body = GOOD.encode()
    pi = "/api/stripe/v1/payment_intents"
    return [
        ("POST", pi, {}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": "Bearer sk_test_123"}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": f"Bearer {forged}"}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": f"Bearer {unknown}"}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": f"Basic {basic_forged}"}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": "Bearer vk_\u00e9"}, body, 401, "vault_key_invalid"),
        ("POST", pi, {"Authorization": "Digest abc"}, body, 401, "vault_key_invalid"),
        ("POST", pi, auth, b"amount=100", 400, "currency_not_allowed"),
        ("POST", pi, auth, b"amount=100&currency=eur&confirm=true", 400, "currency_not_allowed"),
        ("POST", pi, auth, b"currency=usd", 400, "amount_invalid"),
        ("POST", pi, auth, b"amount=-100&currency=usd", 400, "amount_invalid"),
        ("POST", pi, auth, b"amount=1.5&currency=usd", 400, "amount_invalid"),
        ("POST", pi, auth, b"amount=99999999999&currency=usd", 400, "amount_invalid"),
        ("POST", pi, auth, b"amount=abc&currency=usd", 400, "amount_invalid"),
        ("POST", pi, auth, b"amount=100&amount=1&currency=usd", 400, "body_invalid"),
        ("POST", pi, {**auth, "Content-Type": "application/json"}, b"{nope", 400, "body_invalid"),
        ("POST", pi, {**auth, "Content-Type": "application/json"}, b'{"amount": 1e2, "currency": "usd"}', 400, "amount_invalid"),
        ("POST", pi, {**auth, "Content-Type": "text/xml"}, b"<a/>", 400, "body_invalid"),
        ("POST", pi, auth, b"\xff\xfe\xfd", 400, "body_invalid"),
        ("POST", pi, auth, b"a=" + b"x" * MAX_BODY_BYTES, 413, "body_too_large"),
        ("POST", pi + "?amount=99999", auth, body, 400, "body_invalid"),
        ("POST", pi, {**auth, "Idempotency-Key": "x" * 300}, body, 400, "body_invalid"),
        ("POST", "/api/stripe/v1/transfers", auth, b"amount=100&currency=usd", 403, "endpoint_not_allowed"),
        ("POST", "/api/stripe/v1/charges", auth, b"amount=100&currency=usd", 403, "endpoint_not_allowed"),
        ("GET", "/api/stripe/v1/customers", auth, b"", 403, "endpoint_not_allowed"),
        ("GET", "/api/stripe/v1/../v1/customers", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe/v1/payment_intents/..%2F..%2Fcustomers", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe/v1/payment_intents%2Fpi_1", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe/v1/payment_intents/%2e%2e", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe//v1/payment_intents", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe/v2/payment_intents", auth, b"", 400, "api_v2_not_supported"),
        # The same rules at Stripe's own paths, the root of the host (one pipeline behind both routes).
        ("POST", "/v2/core/events", {**auth, "Content-Type": "application/json"}, b"{}", 400, "api_v2_not_supported"),
        ("GET", "/V1/payment_intents", auth, b"", 400, "path_invalid"),
        ("GET", "/v1/payment_intents%2Fpi_1", auth, b"", 400, "path_invalid"),
        ("GET", "/v1/payment_intents/%2e%2e", auth, b"", 400, "path_invalid"),
        ("GET", "/v1/customers", auth, b"", 403, "endpoint_not_allowed"),
        ("POST", "/v1/payment_intents?amount=99999", auth, body, 400, "body_invalid"),
        ("GET", "/api/stripe/v1/payment_intents/pi\\1", auth, b"", 400, "path_invalid"),
        ("GET", "/api/stripe/v1/payment_intents?limit=1&limit=2", auth, b"", 400, "body_invalid"),
        # issue 13: each is refused before anything is reserved
        ("POST", pi, {**auth, "Stripe-Version": "2026-10-28.endive\u00e9"}, body, 400, "header_invalid"),  # case 8
        ("POST", pi, {**auth, "Content-Type": "application/json"},
         b'{"amount": 100, "currency": "usd", "x": ' + b'{"a":' * 990 + b"1" + b"}" * 991, 400, "body_invalid"),  # 9
        ("POST", pi, auth, body + b"&expand[]=customer", 403, "expand_not_allowed"),  # case 10
        ("GET", "/api/stripe/v1/payment_intents?expand[]=data.customer", auth, b"", 403, "expand_not_allowed"),
        ("GET", "/api/stripe/v1/payment_intents/search?query=status:'succeeded'", auth, b"", 403,
         "endpoint_not_allowed"),  # case 11
        ("POST", pi, {**auth, "Stripe-Version": "2014-01-31"}, body, 400, "stripe_version_not_supported"),  # 12
        ("POST", pi, auth, body + b"&metadata[spendgate_idem]=", 400, "parameter_not_allowed"),  # case 3
        ("POST", pi, auth, body + b"&metadata=", 400, "parameter_not_allowed"),
        ("POST", pi, auth, b"amount=100&currency=usd", 400, "parameter_not_allowed"),  # no confirm
        ("POST", "/api/stripe/v1/customers/cus_1/subscriptions", auth, b"items[0][price]=p", 403,
         "endpoint_not_allowed"),  # case 2
        ("PUT", pi, auth, body, 405, "method_not_allowed"),
        ("PATCH", pi, auth, body, 405, "method_not_allowed"),
        ("OPTIONS", pi, auth, b"", 405, "method_not_allowed"),
    ]


def test_table_of_bad_requests(http: httpx.Client, app_stack: AppStack, key: dict[str, Any]) -> None:
    before = state(http, app_stack, key["key_id"])
    for method, target, headers, body, status, code in cases(key["vault_key"]):
        hdrs = {"Content-Type": FORM, **headers}
        got, payload = raw_request(app_stack, method, target, hdrs, body)
        assert (got, payload.get("error", {}).get("code")) == (status, code), (method, target, body[:60])
    assert state(http, app_stack, key["key_id"]) == before
    # None of them left an idempotency record behind: the good request still goes through once.
    ok = http.post("/api/stripe/v1/payment_intents", content=GOOD, headers={
        "Authorization": f"Bearer {key['vault_key']}", "Content-Type": FORM, "Idempotency-Key": "x" * 255})
    assert ok.status_code == 200
    http.post("/api/stripe/v1/payment_intents", content=b"amount=100&currency=eur", headers={
        "Authorization": f"Bearer {key['vault_key']}", "Content-Type": FORM, "Idempotency-Key": "fresh"})
    again = http.post("/api/stripe/v1/payment_intents", content=GOOD, headers={
        "Authorization": f"Bearer {key['vault_key']}", "Content-Type": FORM, "Idempotency-Key": "fresh"})
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers


_bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["amount", "currency", "confirm", "metadata[x]", "amount[]", "customer"]),
                    st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str)), max_size=5).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, ctype=st.sampled_from([FORM, "application/json", "text/plain"]),
       path=st.sampled_from(["v1/payment_intents", "v1/payment_intents/x/../y", "v1/%2e", "v1/charges"]),
       auth=st.sampled_from(["good", "forged", "none"]))
def test_random_bad_input_never_5xx_and_never_spends(
    http: httpx.Client, app_stack: AppStack, key: dict[str, Any], body: bytes, ctype: str, path: str, auth: str
) -> None:
    if path == "v1/payment_intents":
        try:
            build_request("POST", "/" + path, parse_params(body, ctype))
        except SpendgateError:
            pass
        else:
            assume(False)  # a valid charge is not bad input
    vault_key = {"good": key["vault_key"], "forged": key["vault_key"][:-4] + "AAAA", "none": ""}[auth]
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {vault_key}"} if vault_key else {})}
    before = state(http, app_stack, key["key_id"])
    status, payload = raw_request(app_stack, "POST", "/api/stripe/" + path, headers, body)
    assert 400 <= status < 500 and "error" in payload, (status, payload)
    assert state(http, app_stack, key["key_id"]) == before
