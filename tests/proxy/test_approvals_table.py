"""The held-charge approvals table on real Azurite (proxy/approvals.py): one row per request, one decision.

Time is passed in (`now`), so expiry is checked without waiting.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import SpendgateError
from core.settings import Settings
from core.storage import table_service_from_connection_string
from devhost.services import Service
from proxy.approvals import ApprovalHeld, ChargeApprovals, NotPending, approval_id

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def approvals(azurite: Service) -> ChargeApprovals:
    settings = Settings.from_mapping({"AzureWebJobsStorage": azurite.extra["connection_string"],
                                      "SPENDGATE_TABLE_PREFIX": "ap" + uuid.uuid4().hex[:10],
                                      "SPENDGATE_APPROVAL_TIMEOUT": "30m"})
    return ChargeApprovals(table_service_from_connection_string(azurite.extra["connection_string"]), settings)


def hold(a: ChargeApprovals, now: datetime = NOW, fingerprint: str = "fp1", idem: str = "order-1") -> ApprovalHeld | None:
    try:
        a.gate("k1", "label", "POST", "/v1/payment_intents", fingerprint, 9900, "cus_1", idem, now)
    except ApprovalHeld as held:
        return held
    return None


def test_concurrent_first_requests_create_one_pending_approval(approvals: ChargeApprovals) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        held = list(pool.map(lambda _: hold(approvals), range(16)))
    assert all(h is not None and h.code == "approval_required" for h in held)
    assert {h.approval.id for h in held if h} == {approval_id("k1", "order-1")}
    assert sum(1 for h in held if h and h.created) == 1  # one alert, whoever created it
    listed = approvals.list("pending", NOW)
    assert [a["id"] for a in listed] == [approval_id("k1", "order-1")] and listed[0]["expires_at"] == "2026-12-02T12:30:00Z"


def test_another_body_under_the_key_is_an_idempotency_error(approvals: ChargeApprovals) -> None:
    hold(approvals)
    with pytest.raises(SpendgateError) as err:
        approvals.gate("k1", "label", "POST", "/v1/payment_intents", "fp2", 9800, "cus_1", "order-1", NOW)
    assert err.value.code == "idempotency_error"


def test_one_decision_wins_and_an_approved_request_passes(approvals: ChargeApprovals) -> None:
    apr = hold(approvals)
    assert apr is not None
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: _try(approvals, apr.approval.id, "approved" if i % 2 else "rejected"), range(8)))
    assert sum(1 for r in results if isinstance(r, dict)) == 1
    assert all(isinstance(r, NotPending) for r in results if not isinstance(r, dict))
    state = next(r for r in results if isinstance(r, dict))["state"]
    if state == "approved":
        assert hold(approvals) is None  # the same request goes on
    else:
        refused = hold(approvals)
        assert refused is not None and refused.code == "approval_rejected"


def _try(a: ChargeApprovals, approval: str, decision: str) -> dict | NotPending:
    try:
        return a.decide(approval, decision, "ops", None, NOW + timedelta(minutes=1))
    except NotPending as exc:
        return exc


def test_nobody_deciding_in_time_expires_it(approvals: ChargeApprovals) -> None:
    apr = hold(approvals)
    assert apr is not None
    late = NOW + timedelta(minutes=31)
    expired = hold(approvals, now=late)
    assert expired is not None and expired.code == "approval_expired"
    with pytest.raises(NotPending) as err:
        approvals.decide(apr.approval.id, "approved", "ops", None, late)
    assert err.value.state["state"] == "expired"
    assert approvals.list("expired", late)[0]["id"] == apr.approval.id
    assert approvals.get("apr_not-an-id") is None
