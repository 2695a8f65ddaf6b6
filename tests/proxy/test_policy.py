"""Key policy validation: caps, allowlists, durations, and fail-closed refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import SpendgateError
from proxy.endpoints import READ, REFUSED, TABLE, classify, grantable
from proxy.policy import Endpoint, allowed_rule, parse_duration, parse_policy

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
    assert not p.allows("POST", "/v1/charges") and not p.allows("GET", "/v1/charges/search")


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


# Issue 13, case 1: the 23 entries an attacker got issued while the policy was a denylist.
CASE_1_ENTRIES = [
    "POST /v1/customers/*/subscriptions", "POST /v1/customers/*/*", "POST /v1/subscription_items/*",
    "POST /v1/quotes/*/accept", "POST /v1/invoices/*/finalize", "POST /v1/treasury/outbound_payments",
    "POST /v1/issuing/cards", "POST /v1/*/*/*/*", "DELETE /v1/subscriptions/*", "POST /v1/subscriptions",
    "POST /v1/subscription_items", "POST /v1/invoices", "POST /v1/invoices/*/pay", "POST /v1/payouts",
    "POST /v1/transfers", "POST /v1/*", "POST /v1/*/*", "POST /v1/*/*/capture", "GET /v1/*",
    "POST /v1/payment_intents/*", "POST /v1/payment_intents/*/increment_authorization",
    "POST /v1/checkout/sessions", "POST /v1/customers",
]


@pytest.mark.parametrize("entry", CASE_1_ENTRIES)
def test_only_endpoints_from_the_table_can_be_issued(entry: str) -> None:
    """Case 1: anything the endpoint table does not read or meter is refused at issue time."""
    with pytest.raises(SpendgateError) as err:
        parse_policy(req(allowed_endpoints=["POST /v1/payment_intents", entry]), NOW)
    assert err.value.code == "policy_invalid" and "fail closed" in err.value.message
    assert err.value.param == "allowed_endpoints[1]"


def test_every_grantable_table_entry_can_be_issued() -> None:
    p = parse_policy(req(allowed_endpoints=grantable()), NOW)
    assert len(p.allowed_endpoints) == len(grantable())
    assert "POST /v1/payment_intents/*/confirm" in grantable() and "POST /v1/refunds" in grantable()
    assert not any(r.access == REFUSED and str(r) in grantable() for r in TABLE)


def test_search_and_sub_resources_are_their_own_endpoints() -> None:
    """Case 11: `GET /v1/payment_intents/*` does not reach `/v1/payment_intents/search`."""
    allowed = ("GET /v1/payment_intents/*",)
    assert allowed_rule(allowed, "GET", "/v1/payment_intents/pi_123") is not None
    assert allowed_rule(allowed, "GET", "/v1/payment_intents/search") is None
    assert allowed_rule(("GET /v1/payment_intents/search",), "GET", "/v1/payment_intents/search") is not None
    assert allowed_rule(("GET /v1/customers/*",), "GET", "/v1/customers/cus_1/payment_methods") is None
    search = classify("GET", "/v1/charges/search")
    assert search is not None and search.access == READ and search.is_list


def test_a_stored_entry_the_table_does_not_know_grants_nothing() -> None:
    """Keys issued before the table (say with ``POST /v1/*``) reach nothing the table refuses."""
    legacy = ("POST /v1/*", "GET /v1/*", "POST /v1/customers/*/*")
    for method, path in [("POST", "/v1/customers/cus_1/subscriptions"), ("POST", "/v1/transfers"),
                         ("GET", "/v1/customers"), ("POST", "/v1/payment_intents")]:
        assert allowed_rule(legacy, method, path) is None


def test_endpoint_matching_uses_one_segment_per_star() -> None:
    e = Endpoint.parse("GET /v1/charges/*")
    assert e.matches("GET", "/v1/charges/ch_1")
    assert not e.matches("GET", "/v1/charges") and not e.matches("POST", "/v1/charges/ch_1")


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError):
        parse_duration("2")
