"""Key policy validation: caps, allowlists, durations, and fail-closed refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import SpendgateError
from proxy.policy import Endpoint, parse_duration, parse_policy, unmetered_money_endpoint

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def req(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "vendor": "stripe", "label": "azure-durable/abc", "daily_usd_cap": 500,
        "allowed_endpoints": ["POST /v1/payment_intents", "GET /v1/charges/*"], "expires_in": "2h",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def test_valid_policy_is_parsed_into_cents_and_expiry() -> None:
    p = parse_policy(req(total_usd_cap="1000.50", metadata={"run": 7}), NOW)
    assert p.daily_cap_cents == 50_000 and p.total_cap_cents == 100_050
    assert p.expires_at == NOW + timedelta(hours=2)
    assert p.metadata == {"run": "7"} and p.auto_idempotency is True
    assert p.allows("GET", "/v1/charges/ch_1") and not p.allows("GET", "/v1/charges/ch_1/refunds")
    assert not p.allows("POST", "/v1/charges")


def test_expires_at_iso() -> None:
    p = parse_policy(req(expires_in=None, expires_at="2026-11-23T00:00:00Z"), NOW)
    assert p.expires_at == datetime(2026, 11, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"vendor": "paypal"}, "vendor"),
        ({"label": ""}, "label"),
        ({"daily_usd_cap": 0}, "daily_usd_cap"),
        ({"daily_usd_cap": -5}, "daily_usd_cap"),
        ({"daily_usd_cap": True}, "daily_usd_cap"),
        ({"daily_usd_cap": "abc"}, "daily_usd_cap"),
        ({"daily_usd_cap": 1.234}, "daily_usd_cap"),
        ({"daily_usd_cap": 10**9}, "daily_usd_cap"),
        ({"total_usd_cap": "nan"}, "total_usd_cap"),
        ({"allowed_endpoints": []}, "allowed_endpoints"),
        ({"allowed_endpoints": "POST /v1/charges"}, "allowed_endpoints"),
        ({"allowed_endpoints": ["PUT /v1/charges"]}, "allowed_endpoints[0]"),
        ({"allowed_endpoints": ["POST /v2/charges"]}, "allowed_endpoints[0]"),
        ({"allowed_endpoints": ["GET /v1/../admin"]}, "allowed_endpoints[0]"),
        ({"expires_in": "2 weeks"}, "expires_in"),
        ({"expires_in": "0s"}, "expires_in"),
        ({"expires_in": "400d"}, "expires_in"),
        ({"expires_in": None}, "expires_in"),
        ({"expires_at": "2030-01-01T00:00:00Z"}, "expires_in"),
        ({"expires_in": None, "expires_at": "2026-11-23T00:00:00"}, "expires_at"),
        ({"expires_in": None, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"metadata": ["x"]}, "metadata"),
        ({"auto_idempotency": "yes"}, "auto_idempotency"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_policies_are_refused_with_the_field_named(overrides: dict[str, object], param: str) -> None:
    with pytest.raises(SpendgateError) as err:
        parse_policy(req(**overrides), NOW)
    assert err.value.code == "policy_invalid" and err.value.status == 400
    assert err.value.param == param


@pytest.mark.parametrize(
    "entry",
    ["POST /v1/transfers", "POST /v1/payouts", "POST /v1/*", "POST /v1/payment_intents/*/confirm",
     "POST /v1/*/*/capture", "POST /v1/invoices/*/pay", "POST /v1/checkout/sessions", "POST /v1/payment_intents/*"],
)
def test_money_moving_endpoints_without_a_readable_amount_are_refused(entry: str) -> None:
    with pytest.raises(SpendgateError) as err:
        parse_policy(req(allowed_endpoints=["POST /v1/payment_intents", entry]), NOW)
    assert err.value.code == "policy_invalid" and "cannot" in err.value.message and "fail closed" in err.value.message


def test_metered_and_read_only_endpoints_are_accepted() -> None:
    p = parse_policy(req(allowed_endpoints=["POST /v1/charges", "POST /v1/refunds", "GET /v1/*", "POST /v1/customers"]), NOW)
    assert len(p.allowed_endpoints) == 4


def test_endpoint_matching_uses_one_segment_per_star() -> None:
    e = Endpoint.parse("GET /v1/charges/*")
    assert e.matches("GET", "/v1/charges/ch_1")
    assert not e.matches("GET", "/v1/charges") and not e.matches("POST", "/v1/charges/ch_1")
    assert unmetered_money_endpoint("POST", "/v1/transfers") and not unmetered_money_endpoint("POST", "/v1/charges")


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError):
        parse_duration("2")
