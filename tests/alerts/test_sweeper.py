"""The alert outbox and sweeper on real Azurite (alerts/outbox.py, alerts/sweeper.py): one row per fact,
whoever records it, and what a crash left behind is delivered. Time is passed in (`now`)."""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import QueueServiceClient

from alerts import sweeper
from alerts.model import now_iso
from alerts.notify import _revoked_alert, _run_approval_alert, approval_row, threshold_alert, threshold_row
from alerts.outbox import OUTBOX, AlertOutbox
from core.settings import Settings
from core.storage import table_service_from_connection_string
from devhost.services import Service
from proxy.alert_bands import usage_note
from proxy.approvals import ApprovalHeld, ChargeApprovals
from proxy.store import KEY_ROW, KeyRecord, LedgerStore, key_to_entity

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)  # set again before each test (below)
GRACE = timedelta(seconds=30)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Rows are stamped with the real clock and compared with NOW: taken once at import, NOW was
    minutes old when this module ran after slow ones, and a staged row looked too young to sweep."""
    global NOW
    NOW = datetime.now(UTC)


@pytest.fixture
def parts(azurite: Service) -> tuple[AlertOutbox, LedgerStore, ChargeApprovals, QueueServiceClient]:
    conn = azurite.extra["connection_string"]
    settings = Settings.from_mapping({"AzureWebJobsStorage": conn, "SPENDGATE_TABLE_PREFIX": "sw" + uuid.uuid4().hex[:10]})
    tables = table_service_from_connection_string(conn)
    queues = QueueServiceClient.from_connection_string(conn)
    return (AlertOutbox(tables, queues, settings), LedgerStore(tables, settings), ChargeApprovals(tables, settings),
            queues)


def _key(store: LedgerStore, outbox: AlertOutbox, fired: str, note: str = "") -> KeyRecord:
    key = KeyRecord("k" + uuid.uuid4().hex[:12], "stripe", "ops-agent", "hash", 10_000, None,
                    ("POST /v1/payment_intents",), NOW + timedelta(hours=1), NOW, alerts_fired=fired)
    entity = key_to_entity(key)
    if note:
        entity["alerts_usage"] = note
    store.table.create_entity(entity)
    outbox.watch_key(key.key_id, key.expires_at)  # type: ignore[arg-type]
    return key


def _rows(outbox: AlertOutbox, pk: str) -> list[Any]:
    return list(outbox.table.query_entities("PartitionKey eq @pk", parameters={"pk": pk}))


def _sent(queues: QueueServiceClient, alert_id: str) -> int:
    """Messages of this alert on the shared `spendgate-alerts` queue (read in pages, hidden for 2 s only)."""
    client = queues.get_queue_client("spendgate-alerts")
    seen: set[str] = set()
    got = 0
    for _ in range(200):
        fresh = [m for m in client.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=2)
                 if m.id not in seen]
        if not fresh:
            break
        for m in fresh:
            seen.add(m.id)
            got += json.loads(base64.b64decode(m.content))["id"] == alert_id
    return got


def test_a_threshold_marker_without_its_row_is_published_once_with_the_usage_it_recorded(parts: Any) -> None:
    outbox, store, approvals, _queues = parts
    day = NOW.date().isoformat()
    note = usage_note(day, {50, 80}, 8_050, NOW - timedelta(minutes=2))  # 50 and 80 % in one commit
    key = _key(store, outbox, f"{day}:50,80", note)
    report = sweeper.sweep(outbox, store, approvals, NOW, GRACE)
    assert report.thresholds == 2 and report.errors == 0
    rows = {r["RowKey"]: r for r in _rows(outbox, key.key_id)}
    assert set(rows) == {threshold_row(day, 50), threshold_row(day, 80)}
    assert all(r["state"] == "published" for r in rows.values())
    assert json.loads(rows[threshold_row(day, 80)]["alert"])["spent_cents"] == 8_050
    watched = {w["RowKey"]: w for w in outbox.watched_keys()}
    assert watched[key.key_id]["checked"] == f"{day}:50,80"
    again = sweeper.sweep(outbox, store, approvals, NOW + timedelta(minutes=1), GRACE)
    assert again.thresholds == 0 and len(_rows(outbox, key.key_id)) == 2

    # a marker younger than the grace is left to the normal path
    young = _key(store, outbox, f"{day}:50", usage_note(day, {50}, 5_000, NOW))
    assert sweeper.sweep(outbox, store, approvals, NOW + timedelta(seconds=5), GRACE).thresholds == 0
    assert _rows(outbox, young.key_id) == []


def test_racing_publishers_and_the_sweeper_record_one_row_and_send_it(parts: Any) -> None:
    outbox, store, approvals, queues = parts
    day = NOW.date().isoformat()
    key = _key(store, outbox, f"{day}:100", usage_note(day, {100}, 10_000, NOW - timedelta(minutes=5)))
    alert = threshold_alert(key.key_id, key.label, day, 10_000, 10_000, 100, now_iso())

    def race(i: int) -> bool:
        if i % 3 == 0:
            return sweeper.sweep(outbox, store, approvals, NOW, GRACE).thresholds > 0
        return outbox.publish(alert, threshold_row(day, 100))

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(race, range(12)))
    rows = _rows(outbox, key.key_id)
    assert [r["RowKey"] for r in rows] == [threshold_row(day, 100)] and rows[0]["state"] == "published"
    assert _sent(queues, alert.id) >= 1  # at least once (a racer may have sent it as the row's owner)
    assert _rows(outbox, OUTBOX) == [] or all(r["subject"] != key.key_id for r in _rows(outbox, OUTBOX))


def test_a_held_charge_whose_alert_was_lost_gets_it_from_the_sweeper(parts: Any) -> None:
    outbox, store, approvals, queues = parts
    created = NOW - timedelta(minutes=3)
    try:  # the approval is recorded; its alert never was (the process died before raising it)
        approvals.gate("k-held", "agent", "POST", "/v1/payment_intents", "fp", 9_900, None, "idem-1", created)
    except ApprovalHeld as held:
        approval = held.approval
    report = sweeper.sweep(outbox, store, approvals, NOW, GRACE)
    assert report.approvals == 1
    row = outbox.table.get_entity("k-held", approval_row(approval.id))
    alert = json.loads(row["alert"])
    assert (alert["type"], alert["approval_id"], alert["amount_cents"]) == ("approval_requested", approval.id, 9_900)
    assert _sent(queues, alert["id"]) >= 1
    assert sweeper.sweep(outbox, store, approvals, NOW, GRACE).approvals == 0  # seen: `alerted`


def test_an_outbox_row_left_by_a_crash_is_finished_after_the_grace(parts: Any) -> None:
    outbox, store, approvals, queues = parts
    key = _key(store, outbox, "")
    alert = threshold_alert(key.key_id, key.label, "lifetime", 10_000, 5_000, 50, now_iso())
    entity = {"PartitionKey": OUTBOX, "RowKey": f"{key.key_id}|{threshold_row('lifetime', 50)}",
              "subject": key.key_id, "row": threshold_row("lifetime", 50), "alert": alert.to_json(),
              "created_at": now_iso(NOW - timedelta(minutes=2))}
    outbox.table.upsert_entity(entity)  # step 1 of `publish` done, then the process died
    assert sweeper.sweep(outbox, store, approvals, NOW - timedelta(minutes=2), GRACE).finished == 0  # too young
    assert sweeper.sweep(outbox, store, approvals, NOW, GRACE).finished == 1
    assert outbox.table.get_entity(key.key_id, threshold_row("lifetime", 50))["state"] == "published"
    assert _sent(queues, alert.id) == 1 and store.read_row(key.key_id, KEY_ROW) is not None
    assert all(r["subject"] != key.key_id for r in _rows(outbox, OUTBOX))


def test_staged_alerts_are_published_once_their_fact_happened_and_dropped_if_it_never_did(parts: Any) -> None:
    outbox, store, approvals, queues = parts
    revoked, kept = _key(store, outbox, ""), _key(store, outbox, "")
    notified = [_revoked_alert(revoked.key_id, revoked.label), _revoked_alert(kept.key_id, kept.label)]
    for alert in notified:  # staged, then the process died: `publish` never ran
        outbox.stage(alert, "revoked")
    store.mark_revoked(revoked.key_id, NOW)  # one revoke happened; the other key's revoke never did
    run_alert, lost_run = _run_approval_alert("run-started", 5_000, now_iso()), _run_approval_alert("run-gone", 1, "")
    outbox.stage(run_alert, "run-approval")
    outbox.stage(lost_run, "run-approval")
    assert sorted(sweeper.staged_runs(outbox)) == ["run-gone", "run-started"]

    later = NOW + timedelta(minutes=2)
    assert sweeper.sweep(outbox, store, approvals, later, GRACE, None).finished == 1  # runs unknown: left alone
    assert outbox.table.get_entity(revoked.key_id, "revoked")["state"] == "published"
    assert not outbox.exists(kept.key_id, "revoked")
    report = sweeper.sweep(outbox, store, approvals, later, GRACE, {"run-started"})
    assert (report.finished, report.dropped) == (1, 0)
    assert outbox.exists("run-run-started", "run-approval") and not outbox.exists("run-run-gone", "run-approval")
    report = sweeper.sweep(outbox, store, approvals, NOW + timedelta(minutes=11), GRACE, set())
    assert report.dropped == 2  # the revoke and the start that never happened: no alert, ever
    assert all(r["subject"] not in (kept.key_id, "run-run-gone") for r in _rows(outbox, OUTBOX))
    assert _sent(queues, notified[0].id) == 1 and _sent(queues, notified[1].id) == 0
