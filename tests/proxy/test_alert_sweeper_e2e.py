"""Issue 16, at-least-once alerts over HTTP: what a crash or a failed queue send left, the sweeper delivers.

Three devhosts of the real app, one after another, on the same storage (one table prefix) and webhook
receiver, as three instances of one deployment would be:

1. `SPENDGATE_ALERT_FAULT=queue`: every queue send of an alert fails in that process. A charge crosses
   50 %: the alert row is recorded `pending`, nothing reaches the queue or the webhook.
2. `SPENDGATE_ALERT_FAULT=crash`: the process exits (`os._exit`) right after a threshold's ledger
   commit. A charge crosses 50 %: the host dies; the key row says 50 % fired, no alert row exists.
3. A healthy host: its `sweep_alerts` timer (every minute, devhost runs it as the Functions host does)
   publishes both, exactly as the normal path does: one alert row each (state `published`), one
   message each on `spendgate-alerts`, one signed POST each at the webhook, which verifies.

Assertions are on real state: rows in Azurite, messages on the queue, what the receiver got.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from azure.data.tables import TableClient

from alerts.model import stable_id
from alerts.webhook import verify
from core.storage import table_service_from_connection_string
from devhost.services import Service, free_port
from tests.billing.test_billing_e2e import _own_devhost
from tests.conftest import wait_for
from tests.proxy.test_alerts_e2e import SECRET, Receiver, issue, queued

pytestmark = pytest.mark.integration


def charge(base: str, vault_key: str, cents: int) -> int | None:
    """One payment intent through the proxy; None when the host died under the request."""
    try:
        return httpx.post(f"{base}/v1/payment_intents", timeout=60, headers={
            "Authorization": f"Bearer {vault_key}", "Idempotency-Key": uuid.uuid4().hex}, data={
            "amount": cents, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}).status_code
    except httpx.TransportError:
        return None


def test_a_crash_after_the_threshold_commit_and_failed_queue_sends_are_delivered_by_the_sweeper(
    azurite: Service, localstripe: Service
) -> None:
    receiver = Receiver()
    prefix = "sw" + uuid.uuid4().hex[:10]
    common = {"SPENDGATE_TABLE_PREFIX": prefix, "SPENDGATE_ALERT_WEBHOOK_URL": receiver.url,
              "SPENDGATE_ALERT_WEBHOOK_SECRET": SECRET, "SPENDGATE_ALERT_SWEEP_GRACE_SECONDS": "2"}
    tables = table_service_from_connection_string(azurite.extra["connection_string"])
    alerts: TableClient = tables.get_table_client(f"{prefix}alerts")
    day = datetime.now(UTC).date().isoformat()
    row_key = f"threshold-{day}-050"

    def rows(key_id: str) -> list[Any]:
        return list(alerts.query_entities("PartitionKey eq @pk", parameters={"pk": key_id}))

    def posted(key_id: str) -> list[tuple[bytes, str]]:
        with receiver.lock:
            return [(b, s) for b, s in receiver.got if json.loads(b).get("key_id") == key_id]

    try:
        # 1. the queue sends fail: the row is recorded, pending; nothing is sent
        host = _own_devhost(azurite, localstripe, "sweeper-queue", free_port(), SPENDGATE_ALERT_FAULT="queue", **common)
        try:
            failed = issue(host.url, daily_usd_cap=10)
            assert charge(host.url, failed["vault_key"], 600) == 200
            pending = wait_for(lambda: [r for r in rows(failed["key_id"]) if r["RowKey"] == row_key], 30,
                               "the pending alert row", every=0.5)[0]
            assert pending["state"] == "pending"
        finally:
            host.stop()
        assert posted(failed["key_id"]) == []

        # 2. the process dies between the threshold's ledger commit and its alert row
        host = _own_devhost(azurite, localstripe, "sweeper-crash", free_port(), SPENDGATE_ALERT_FAULT="crash", **common)
        try:
            crashed = issue(host.url, daily_usd_cap=10)
            charge(host.url, crashed["vault_key"], 600)
            wait_for(lambda: host.proc.poll() is not None, 30, "the host to exit", every=0.5)
            assert host.proc.returncode == 70
        finally:
            host.stop()
        ledger = tables.get_table_client(f"{prefix}ledger")
        key_row = ledger.get_entity(crashed["key_id"], "key")
        assert key_row["alerts_fired"] == f"{day}:50" and rows(crashed["key_id"]) == []  # committed, not recorded

        # 3. a healthy host: its sweeper timer delivers both
        host = _own_devhost(azurite, localstripe, "sweeper-ok", free_port(), **common)
        try:
            for key in (failed, crashed):  # the timer fires at second 0 of each minute; grace 2 s
                wait_for(lambda k=key: posted(k["key_id"]), 150, f"the sweeper to publish {key['key_id']}", every=0.5)
            time.sleep(3)  # any duplicate delivery would arrive now
        finally:
            host.stop()
        messages = queued(azurite, None)  # one pass: receiving hides what it read for a minute
        for key in (failed, crashed):
            recorded = rows(key["key_id"])
            assert [r["RowKey"] for r in recorded] == [row_key], recorded  # one row, never two
            assert recorded[0]["state"] == "published"
            alert = json.loads(recorded[0]["alert"])
            assert alert["id"] == stable_id("spend_threshold", key["key_id"], day, "50")
            assert (alert["type"], alert["threshold_percent"], alert["spent_cents"], alert["cap_cents"]) == (
                "spend_threshold", 50, 600, 1000)  # usage with the crossing charge, as the normal path has it
            on_queue = [m for m in messages if m.get("key_id") == key["key_id"]]
            assert [a["id"] for a in on_queue] == [alert["id"]]
            delivered = posted(key["key_id"])
            assert len(delivered) == 1 and json.loads(delivered[0][0]) == alert
            assert verify(SECRET, delivered[0][0], delivered[0][1])
        assert list(alerts.query_entities("PartitionKey eq '_outbox'")) == []  # nothing left to finish
    finally:
        receiver.server.shutdown()
