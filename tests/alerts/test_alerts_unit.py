"""Unit tests (no Azurite): threshold bands, the webhook's signature and retries, approval windows and wording."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from agents import approval as agent_approval
from alerts import webhook
from alerts.model import Alert
from billing.payloads import RunRequest
from billing.request import parse_run_request
from billing.run_approval import with_approval_window
from core.errors import SpendgateError
from proxy import alert_bands
from proxy.approvals import decider
from proxy.policy import parse_policy
from proxy.store import Counters, KeyRecord

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
DAY = "2026-12-02"


def key(daily: int = 10_000, total: int | None = None, **extra: object) -> KeyRecord:
    return KeyRecord("k1", "stripe", "label", "hash", daily, total, ("POST /v1/payment_intents",),
                     NOW + timedelta(hours=1), NOW, **extra)  # type: ignore[arg-type]


def used(spent: int, pending: int = 0, leased: int = 0) -> Counters:
    return Counters(DAY, spent, pending, spent, pending, leased, leased, 1 if leased else 0)


# --- bands ----------------------------------------------------------------------------
def test_the_binding_cap_is_the_lifetime_cap_when_it_is_not_above_the_daily_one() -> None:
    assert alert_bands.binding(key(10_000, 5_000), used(100), DAY).window == "lifetime"
    assert alert_bands.binding(key(10_000, 20_000), used(100), DAY).window == DAY
    assert alert_bands.binding(key(10_000), used(100), DAY).cap == 10_000


def test_the_key_row_grants_no_room_past_the_next_unfired_threshold() -> None:
    k = key(10_000)
    assert alert_bands.band_room(k, used(1_000, 500, 2_000), DAY) == 5_000 - 3_500 - 1  # strictly below
    fired_50 = replace(k, alerts_fired=f"{DAY}:50")
    assert alert_bands.band_room(fired_50, used(6_000), DAY) == 8_000 - 6_000 - 1
    yesterday = replace(k, alerts_fired="2026-12-01:50,80")  # a new day starts afresh
    assert alert_bands.band_room(yesterday, used(0), DAY) == 4_999
    assert alert_bands.band_room(replace(k, alerts_fired=f"{DAY}:50,80"), used(9_000), DAY) == 999
    assert alert_bands.band_room(replace(k, alerts_fired=f"{DAY}:50,80,100"), used(9_000), DAY) is None
    assert alert_bands.band_room(replace(k, alert_thresholds=()), used(0), DAY) is None


def test_a_threshold_fires_when_a_reservation_reaches_it_and_100_also_when_the_cap_refuses() -> None:
    k = key(10_000)
    assert alert_bands.to_fire(k, used(4_800), DAY, need=100, true_room=5_200) == []
    assert alert_bands.to_fire(k, used(4_900), DAY, need=100, true_room=5_100) == [50]  # reaches 5,000 exactly
    assert alert_bands.to_fire(k, used(4_000), DAY, need=5_000, true_room=6_000) == [50, 80]
    assert alert_bands.to_fire(replace(k, alerts_fired=f"{DAY}:50,80"), used(9_950), DAY, 100, 50) == [100]
    assert alert_bands.to_fire(replace(k, alerts_fired=f"{DAY}:50,80"), used(9_950), DAY, 50, 50) == [100]  # fills it
    # a refused charge far bigger than the room fires nothing that usage has not reached
    assert alert_bands.to_fire(k, used(0), DAY, need=50_000, true_room=10_000) == []
    assert alert_bands.to_fire(k, used(6_000), DAY, need=50_000, true_room=4_000) == [50]
    op = alert_bands.op_mark_fired(replace(k, etag="W/1", alerts_fired=f"{DAY}:50"), DAY, {80})
    assert op[1]["alerts_fired"] == f"{DAY}:50,80" and op[2]["etag"] == "W/1"


# --- webhook --------------------------------------------------------------------------
def test_a_signature_verifies_only_with_the_secret_the_body_and_a_fresh_timestamp() -> None:
    body = Alert("key_revoked", "revoked", "2026-12-02T12:00:00Z", key_id="k1").to_json().encode()
    header = webhook.sign("s3cret", body, 1_800_000_000)
    assert webhook.verify("s3cret", body, header, now=1_800_000_010)
    assert not webhook.verify("other", body, header, now=1_800_000_010)
    assert not webhook.verify("s3cret", body + b" ", header, now=1_800_000_010)
    assert not webhook.verify("s3cret", body, header, now=1_800_000_000 + 301)
    assert not webhook.verify("s3cret", body, "v1=abc", now=1_800_000_000)


def test_delivery_retries_with_backoff_and_then_raises() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503 if len(calls) < 3 else 200)

    slept: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert webhook.deliver(client, "https://hooks.example/x", "k", b"{}", sleep=slept.append, clock=lambda: 1.0) == 3
    assert slept == [0.5, 1.0] and all(webhook.verify("k", b"{}", r.headers[webhook.HEADER], now=1.0) for r in calls)

    failing = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    with pytest.raises(webhook.DeliveryFailed):
        webhook.deliver(failing, "https://hooks.example/x", "k", b"{}", sleep=lambda s: None)


def test_an_alert_has_a_schema_and_no_unknown_type() -> None:
    doc = json.loads(Alert("spend_threshold", "m", "t", key_id="k", threshold_percent=80).to_json())
    assert doc["schema"] == 1 and doc["id"].startswith("alt_") and doc["threshold_percent"] == 80
    with pytest.raises(ValueError):
        Alert("surprise", "m", "t")


# --- approvals ------------------------------------------------------------------------
def test_runs_wait_at_the_threshold_or_on_request_never_longer_than_the_setting() -> None:
    body = {"billing_period": "2026-06", "budget_usd": 1000, "customers": [{"customer_id": "cus_1", "amount_cents": 1}]}
    run, _ = parse_run_request(body)
    assert with_approval_window(run, None, timedelta(hours=24), NOW).approval_expires_at is None
    assert with_approval_window(run, 100_001, timedelta(hours=24), NOW).approval_expires_at is None
    assert with_approval_window(run, 100_000, timedelta(hours=24), NOW).approval_expires_at == "2026-12-03T12:00:00Z"
    asked, _ = parse_run_request({**body, "require_approval": True, "approval_timeout": "30m"})
    assert with_approval_window(asked, None, timedelta(hours=24), NOW).approval_expires_at == "2026-12-02T12:30:00Z"
    longer, _ = parse_run_request({**body, "require_approval": True, "approval_timeout": "3d"})
    assert with_approval_window(longer, None, timedelta(hours=24), NOW).approval_expires_at == "2026-12-03T12:00:00Z"
    assert RunRequest.from_dict(asked.to_dict()) == asked
    for bad in ({"require_approval": "yes"}, {"approval_timeout": "soon"}):
        with pytest.raises(SpendgateError) as err:
            parse_run_request({**body, **bad})
        assert err.value.code == "policy_invalid"


def test_who_decides_is_the_easy_auth_principal_else_the_approver() -> None:
    assert decider({"X-MS-CLIENT-PRINCIPAL-NAME": "ops@example.com"}, {"approver": "x"}) == ("ops@example.com", None)
    assert decider({}, {"approver": " lead ", "reason": "ok"}) == ("lead", "ok")
    for headers, body in (({}, None), ({}, {"approver": ""}), ({}, {"approver": "a", "extra": 1}), ({}, [1])):
        with pytest.raises(SpendgateError):
            decider(headers, body)


def test_key_policies_take_approval_above_and_alert_thresholds() -> None:
    base = {"vendor": "stripe", "label": "a", "daily_usd_cap": 100, "allowed_endpoints": ["POST /v1/payment_intents"],
            "expires_in": "1h"}
    policy = parse_policy({**base, "approval_above_usd": 12.5, "alert_thresholds": [80, 50]}, NOW)
    assert policy.approval_above_cents == 1250 and policy.alert_thresholds == (50, 80)
    for bad in ({"approval_above_usd": 0}, {"alert_thresholds": [0]}, {"alert_thresholds": [101]},
                {"alert_thresholds": "50"}, {"alert_thresholds": [True]}):
        with pytest.raises(SpendgateError) as err:
            parse_policy({**base, **bad}, NOW)
        assert err.value.param in ("approval_above_usd", "alert_thresholds")


def test_the_agent_is_told_to_wait_and_not_to_retry() -> None:
    out = json.loads(agent_approval.charge_held(
        "approval_required", {"error": {"approval": "apr_" + "0" * 32}}, "idem-1"))
    assert out["message"].startswith(f"waiting for approval apr_{'0' * 32}; do not retry until approved")
    assert out["retryable"] is False and out["stop"] is False and out["approval_state"] == "pending"
    status = agent_approval.status({"id": "apr_1", "state": "approved", "amount_cents": 5000, "customer": "cus_1"})
    assert status["approval_state"] == "approved" and "same arguments" in status["message"]


def test_the_approval_timeout_setting_is_a_duration_of_at_most_six_days() -> None:
    from core.settings import InvalidSettingError, Settings

    assert Settings.from_mapping({}).approval_timeout == timedelta(hours=24)
    assert Settings.from_mapping({"SPENDGATE_APPROVAL_TIMEOUT": "6d"}).approval_timeout == timedelta(days=6)
    for bad in ("7d", "0s", "soon"):
        with pytest.raises(InvalidSettingError):
            _ = Settings.from_mapping({"SPENDGATE_APPROVAL_TIMEOUT": bad}).approval_timeout
    assert Settings.from_mapping({"SPENDGATE_APPROVAL_THRESHOLD_USD": "1000.50"}).approval_threshold_cents == 100_050
    with pytest.raises(InvalidSettingError):
        _ = Settings.from_mapping({"SPENDGATE_APPROVAL_THRESHOLD_USD": "lots"}).approval_threshold_cents
