"""The held-charge approvals table on real Azurite (proxy/approvals.py): one row per request, one decision.

Time is passed in (`now`), so expiry is checked without waiting.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import UpdateMode

from core.errors import SpendgateError
from core.settings import Settings
from core.storage import table_service_from_connection_string
from devhost.services import Service
from proxy.approval_index import RETENTION_DAYS
from proxy.approvals import ApprovalHeld, ChargeApprovals, NotPending, _entity, approval_id

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
    listed = approvals.list("pending", NOW)["data"]
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
    assert approvals.list("pending", late)["data"] == []  # expired: no longer listed as waiting
    assert approvals.sweep(late, timedelta(0)) == {"moved": 1, "dropped": 0, "forgotten": 0}
    assert approvals.list("expired", late)["data"][0]["id"] == apr.approval.id
    assert approvals.get("apr_not-an-id") is None


def _rows(a: ChargeApprovals, partition: str) -> list[str]:
    return [e["RowKey"] for e in a.table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})]


def test_lists_page_stripe_style_and_pending_never_reads_decided_rows(approvals: ChargeApprovals) -> None:
    ids = []
    for n in range(7):  # created a minute apart: newest first is the reverse
        held = hold(approvals, now=NOW + timedelta(minutes=n), idem=f"order-{n}")
        assert held is not None
        ids.append(held.approval.id)
    t = NOW + timedelta(minutes=10)
    for n in (0, 2, 4):  # decided in this order: the newest decision is order-4's
        approvals.decide(ids[n], "approved" if n != 2 else "rejected", "ops", None, t + timedelta(seconds=n))
    assert sorted(_rows(approvals, "pending")) == sorted(ids[n] for n in (1, 3, 5, 6))  # what a pending list reads

    first = approvals.list("pending", t, limit=3)
    assert [a["id"] for a in first["data"]] == [ids[6], ids[5], ids[3]] and first["has_more"] is True
    rest = approvals.list("pending", t, limit=3, starting_after=ids[3])
    assert [a["id"] for a in rest["data"]] == [ids[1]] and rest["has_more"] is False

    decided = approvals.list("all", t, limit=10)  # what waits, then the decisions, newest first
    assert [a["id"] for a in decided["data"]] == [ids[6], ids[5], ids[3], ids[1], ids[4], ids[2], ids[0]]
    page = approvals.list("approved", t, limit=1)
    assert [a["id"] for a in page["data"]] == [ids[4]] and page["has_more"] is True
    page = approvals.list("approved", t, limit=1, starting_after=ids[4])
    assert [a["id"] for a in page["data"]] == [ids[0]] and page["has_more"] is False
    assert approvals.list("all", t, limit=2, starting_after=ids[4])["data"][0]["id"] == ids[2]
    with pytest.raises(SpendgateError) as err:
        approvals.list("approved", t, starting_after="apr_" + "0" * 32)
    assert err.value.param == "starting_after"


def test_decisions_are_deleted_only_past_the_retention_and_crashes_are_repaired(approvals: ChargeApprovals) -> None:
    held = hold(approvals)
    assert held is not None
    approvals.decide(held.approval.id, "approved", "ops", None, NOW + timedelta(minutes=1))
    assert approvals.index.retention == timedelta(days=RETENTION_DAYS)  # 90 > the 30-day idempotency retention
    assert approvals.sweep(NOW + timedelta(days=RETENTION_DAYS - 1), timedelta(0))["forgotten"] == 0
    assert approvals.get(held.approval.id) is not None
    assert approvals.sweep(NOW + timedelta(days=RETENTION_DAYS, minutes=2), timedelta(0))["forgotten"] == 1
    assert approvals.get(held.approval.id) is None and _rows(approvals, "decided") == []

    # a crash between the decision and the index: the pending row stays until the sweeper moves it
    other = hold(approvals, idem="order-crash")
    assert other is not None
    decided = replace(other.approval, state="rejected", decided_by="ops", decided_at="2026-12-02T12:05:00Z")
    approvals.table.update_entity(_entity(decided), mode=UpdateMode.REPLACE)  # the decision alone
    assert approvals.sweep(NOW + timedelta(minutes=6), timedelta(seconds=30))["moved"] == 1
    assert _rows(approvals, "pending") == [] and approvals.list("rejected", NOW)["data"][0]["id"] == other.approval.id

    # a crash between the pending row and the approval row: an orphan, dropped after the grace
    approvals.index.add_pending({**other.approval.view(NOW), "id": "apr_" + "1" * 32})
    assert approvals.sweep(NOW + timedelta(seconds=10), timedelta(seconds=30))["dropped"] == 0
    assert approvals.sweep(NOW + timedelta(minutes=1), timedelta(seconds=30))["dropped"] == 1
