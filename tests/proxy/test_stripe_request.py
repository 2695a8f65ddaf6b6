"""Reading requests bound for Stripe: path safety, params, amounts (pure; no services)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import SpendgateError
from proxy.endpoints import classify
from proxy.stripe_request import (
    MARKER_PARAM,
    MAX_BODY_BYTES,
    build_request,
    check_expand,
    check_headers,
    check_stripe_version,
    forward_body,
    parse_params,
    parse_query,
    safe_path,
)


@pytest.mark.parametrize(
    ("route", "raw"),
    [("v1/payment_intents", "/api/stripe/v1/payment_intents"), ("v1/charges/ch_1", None)],
)
def test_safe_paths(route: str, raw: str | None) -> None:
    assert safe_path(route, raw) == "/" + route


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        ("v1/../admin", None), ("v1/%2e%2e/x", None), ("v1/a%2Fb", None), ("v2/charges", None), ("v1", None),
        ("", None), (None, None), ("v1/charges/ch 1", None), ("v1/charges\\x", None), ("v1/./charges", None),
        ("v1//charges", None), ("v1/charges;x", None),
        ("v1/a/b", "/api/stripe/v1/a%2Fb"), ("v1/charges", "/api/stripe/v1/x/../charges"),
        ("v1/charges", "/api/stripe//v1/charges"),
    ],
)
def test_traversal_and_odd_paths_are_refused(route: str | None, raw: str | None) -> None:
    with pytest.raises(SpendgateError) as err:
        safe_path(route, raw)
    assert err.value.code == "path_invalid"


def test_form_and_json_give_the_same_params_and_fingerprint() -> None:
    form = parse_params(b"amount=2900&currency=usd&confirm=true&metadata[plan]=pro&expand[]=x",
                        "application/x-www-form-urlencoded")
    js = parse_params(b'{"amount": 2900, "currency": "usd", "confirm": true, "metadata": {"plan": "pro"}, "expand": ["x"]}',
                      "application/json")
    a, b = build_request("POST", "/v1/payment_intents", form), build_request("POST", "/v1/payment_intents", js)
    assert a.amount_cents == b.amount_cents == 2900 and a.metered_amount == 2900
    assert dict(js)["metadata[plan]"] == "pro" and dict(js)["expand[0]"] == "x"
    assert build_request("POST", "/v1/payment_intents", sorted(form)).fingerprint() == a.fingerprint()


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (b"amount=2900", None, "currency_not_allowed"),
        (b"amount=2900&currency=eur", None, "currency_not_allowed"),
        (b"currency=usd", None, "amount_invalid"),
        (b"amount=-5&currency=usd", None, "amount_invalid"),
        (b"amount=0&currency=usd", None, "amount_invalid"),
        (b"amount=29.5&currency=usd", None, "amount_invalid"),
        (b"amount=1e3&currency=usd", None, "amount_invalid"),
        (b"amount=100000000000&currency=usd", None, "amount_invalid"),
        (b"amount[x]=1&currency=usd", None, "amount_invalid"),
        (b'{"amount": 29.5, "currency": "usd"}', "application/json", "amount_invalid"),
        (b'{"amount": true, "currency": "usd"}', "application/json", "amount_invalid"),
        (b"amount=100&amount=99999&currency=usd", None, "body_invalid"),
        (b"amount=100&currency=usd&&", None, "body_invalid"),
        (b"\xff\xfe", None, "body_invalid"),
        (b"{not json", "application/json", "body_invalid"),
        (b"[1,2]", "application/json", "body_invalid"),
        (b"amount=100", "multipart/form-data", "body_invalid"),
        (b"a" * (MAX_BODY_BYTES + 1), None, "body_too_large"),
        (b"amount=2900&currency=usd", None, "parameter_not_allowed"),
        (b"amount=2900&currency=usd&confirm=false", None, "parameter_not_allowed"),
        (b"amount=2900&currency=usd&confirm=true&metadata[spendgate_idem]=", None, "parameter_not_allowed"),
        (b"amount=2900&currency=usd&confirm=true&metadata[spendgate_idem]=abc", None, "parameter_not_allowed"),
        (b'{"amount": 2900, "currency": "usd", "confirm": true, "metadata": {"spendgate_idem": "x"}}',
         "application/json", "parameter_not_allowed"),
        (b"amount=2900&currency=usd&confirm=true&metadata=", None, "parameter_not_allowed"),
        (b'{"a":' * 990 + b"1" + b"}" * 990, "application/json", "body_invalid"),
        (b'{"amount": 2900, "currency": "usd", "confirm": true, "x": ' + b"[" * 9 + b"]" * 9 + b"}",
         "application/json", "body_invalid"),
        (b"amount=2900&currency=usd&confirm=true&a" + b"[x]" * 9 + b"=1", None, "body_invalid"),
    ],
)
def test_bad_bodies(body: bytes, ctype: str | None, code: str) -> None:
    with pytest.raises(SpendgateError) as err:
        build_request("POST", "/v1/payment_intents", parse_params(body, ctype))
    assert err.value.code == code and 400 <= err.value.status < 500


def test_refund_amount_is_optional_and_metered() -> None:
    """Refunds count against the cap; without an amount it is read from Stripe later (pricing)."""
    r = build_request("POST", "/v1/refunds", parse_params(b"payment_intent=pi_1", None))
    assert r.kind == "refund" and r.amount_cents is None and r.marked
    r = build_request("POST", "/v1/refunds", parse_params(b"payment_intent=pi_1&amount=100", None))
    assert r.amount_cents == 100 and r.metered_amount == 100


def test_confirm_and_capture_are_priced_later() -> None:
    confirm = build_request("POST", "/v1/payment_intents/pi_1/confirm", [])
    assert confirm.kind == "intent" and confirm.amount_cents is None and not confirm.marked
    capture = build_request("POST", "/v1/payment_intents/pi_1/capture", [("amount_to_capture", "500")])
    assert capture.kind == "capture" and capture.amount_cents == 500
    assert build_request("POST", "/v1/payment_intents/pi_1/cancel", []).metered_amount == 0


def test_the_marker_is_only_ever_the_proxys() -> None:
    params = [("amount", "1"), ("metadata[a b]", "x")]
    assert forward_body(params, "m1").decode().endswith("metadata%5Bspendgate_idem%5D=m1")
    assert forward_body([*params, (MARKER_PARAM, "mine")], "m1").decode().count("spendgate_idem") == 1
    assert "mine" not in forward_body([*params, (MARKER_PARAM, "mine")], "m1").decode()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"stripe-version": "2026-10-28.endive\xe9"}, "header_invalid"),  # case 8
        ({"idempotency-key": "caf\u00e9"}, "header_invalid"),
        ({"content-type": "application/json\x00"}, "header_invalid"),
    ],
)
def test_header_values_must_be_printable_ascii(headers: dict[str, str], code: str) -> None:
    with pytest.raises(SpendgateError) as err:
        check_headers(headers)
    assert err.value.code == code and err.value.status == 400


def test_only_the_pinned_stripe_version_passes() -> None:
    """Case 12: an old API version changes what endpoints do; it is refused, not forwarded."""
    check_stripe_version(None, "2026-10-28.endive")
    check_stripe_version("2026-10-28.endive", "2026-10-28.endive")
    with pytest.raises(SpendgateError) as err:
        check_stripe_version("2014-01-31", "2026-10-28.endive")
    assert err.value.code == "stripe_version_not_supported" and err.value.headers()["Stripe-Should-Retry"] == "false"
    assert "2026-10-28.endive" in err.value.message


@pytest.mark.parametrize(
    ("method", "path", "expand", "readable", "ok"),
    [
        ("POST", "/v1/payment_intents", "customer", {"payment_intent"}, False),  # case 10
        ("GET", "/v1/payment_intents/pi_1", "customer", {"payment_intent"}, False),
        ("GET", "/v1/payment_intents", "data.customer", {"payment_intent"}, False),
        ("GET", "/v1/payment_intents", "data.customer", {"payment_intent", "customer"}, True),
        ("GET", "/v1/payment_intents", "customer", {"payment_intent", "customer"}, False),  # a list needs data.
        ("GET", "/v1/payment_intents/pi_1", "latest_charge", {"payment_intent", "charge"}, True),
        ("GET", "/v1/payment_intents/pi_1", "latest_charge.customer", {"payment_intent", "charge"}, False),
        ("GET", "/v1/customers/cus_1", "invoice_settings.default_payment_method", {"customer", "payment_method"}, True),
        ("GET", "/v1/payment_intents/pi_1", "invoice", {"payment_intent", "invoice"}, False),  # not expandable here
    ],
)
def test_expand_only_into_objects_the_key_may_read(
    method: str, path: str, expand: str, readable: set[str], ok: bool
) -> None:
    rule = classify(method, path)
    assert rule is not None
    if ok:
        check_expand(rule, [("expand[]", expand)], readable)
    else:
        with pytest.raises(SpendgateError) as err:
            check_expand(rule, [("expand[0]", expand)], readable)
        assert err.value.code == "expand_not_allowed" and err.value.status == 403


def test_query_strings() -> None:
    assert parse_query("limit=3&expand[]=data.customer&expand[]=x") == [
        ("limit", "3"), ("expand[]", "data.customer"), ("expand[]", "x")]
    with pytest.raises(SpendgateError):
        parse_query("limit=3&limit=4")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, "application/json", "application/x-www-form-urlencoded", "text/plain"]))
def test_arbitrary_bodies_never_crash(body: bytes, ctype: str | None) -> None:
    """Any bytes either parse into a request or raise a catalogued 4xx error."""
    try:
        req = build_request("POST", "/v1/payment_intents", parse_params(body, ctype))
    except SpendgateError as err:
        assert 400 <= err.status < 500
    else:
        assert req.amount_cents is not None and 0 < req.amount_cents <= 99_999_999 and req.currency == "usd"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_paths_are_safe_or_refused(path: str) -> None:
    try:
        safe = safe_path(path, "/api/stripe/" + path)
    except SpendgateError as err:
        assert err.code == "path_invalid"
    else:
        assert safe.startswith("/v1/") and ".." not in safe and "%" not in safe and "//" not in safe
