"""Issue 16, point 3 over HTTP: spend alerts fire exactly once per threshold, and the webhook is signed.

A devhost of this module's own runs with `SPENDGATE_ALERT_WEBHOOK_URL` pointing at a receiver in the
test. 32 chargers race on one key through the proxy (its lease ledger); the assertions are on real
state: the alert rows (`GET /api/alerts`), the messages on the `spendgate-alerts` queue, what the
receiver got and whether its signature verifies, and the payment intents in localstripe.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from azure.storage.queue import QueueClient

from alerts.webhook import HEADER, verify
from devhost.seed import iter_objects
from devhost.services import Service, free_port
from tests.billing.e2e import unique_plan
from tests.billing.test_billing_e2e import _own_devhost
from tests.conftest import FUNCTION_KEY, STRIPE_TEST_SECRET

pytestmark = pytest.mark.integration
HEADERS = {"x-functions-key": FUNCTION_KEY}
SECRET = "whsec_spendgate_test_" + uuid.uuid4().hex


class Receiver:
    """A webhook endpoint that records every POST (raw body and signature); the first one answers 500."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str]] = []
        self.calls = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.calls += 1
                    fail = receiver.calls == 1  # the delivery must retry
                    if not fail:
                        receiver.got.append((body, self.headers.get(HEADER, "")))
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/spend"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for body, _ in self.got]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def alert_host(azurite: Service, localstripe: Service, receiver: Receiver) -> Iterator[str]:
    port = free_port()
    svc = _own_devhost(azurite, localstripe, "alerts", port, SPENDGATE_ALERT_WEBHOOK_URL=receiver.url,
                       SPENDGATE_ALERT_WEBHOOK_SECRET=SECRET)
    yield svc.url
    svc.stop()


def issue(base: str, **policy: Any) -> dict[str, Any]:
    resp = httpx.post(f"{base}/api/vault/keys", headers=HEADERS, timeout=30, json={
        "vendor": "stripe", "label": unique_plan("alerts"), "allowed_endpoints": ["POST /v1/payment_intents"],
        "expires_in": "1h", **policy})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def queued(azurite: Service, key_id: str | None) -> list[dict[str, Any]]:
    """The key's alerts (None: every alert) on `spendgate-alerts`, received in pages of 32 and left there
    (the app never consumes this queue); what was read stays invisible for a minute."""
    client = QueueClient.from_connection_string(azurite.extra["connection_string"], "spendgate-alerts")
    seen, out = set(), []
    for _ in range(200):  # received (not deleted) in turn, so every message is looked at once
        batch = list(client.receive_messages(messages_per_page=32, visibility_timeout=60, max_messages=32))
        if not batch:
            break
        for m in batch:
            if m.id not in seen:
                seen.add(m.id)
                alert = json.loads(base64.b64decode(m.content))
                if key_id is None or alert.get("key_id") == key_id:
                    out.append(alert)
    return out


def test_32_concurrent_chargers_fire_each_threshold_exactly_once_and_the_webhook_verifies(
    alert_host: str, azurite: Service, localstripe: Service, receiver: Receiver
) -> None:
    key = issue(alert_host, daily_usd_cap=20)
    assert key["alert_thresholds"] == [50, 80, 100]
    tag = uuid.uuid4().hex

    def charge(n: int) -> int:
        return httpx.post(f"{alert_host}/v1/payment_intents", timeout=120, headers={
            "Authorization": f"Bearer {key['vault_key']}", "Idempotency-Key": f"{tag}-{n}"}, data={
            "amount": 50, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
            "metadata[test]": tag}).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(charge, range(48)))
    assert codes.count(200) == 40 and codes.count(402) == 8, codes  # $20 / $0.50, exactly
    made = [pi for pi in iter_objects(localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
            if (pi.get("metadata") or {}).get("test") == tag]
    assert len(made) == 40

    def thresholds(alerts: list[dict[str, Any]]) -> list[int]:
        return sorted(a["threshold_percent"] for a in alerts if a["type"] == "spend_threshold")

    listed: list[dict[str, Any]] = []
    for _ in range(300):  # published off the ledger's thread: wait until all three are recorded
        listed = httpx.get(f"{alert_host}/api/alerts", params={"key_id": key["key_id"]}, headers=HEADERS,
                           timeout=30).json()["data"]
        if len(thresholds(listed)) >= 3:
            break
        time.sleep(0.1)
    assert thresholds(listed) == [50, 80, 100], listed
    by_percent = {a["threshold_percent"]: a for a in listed}
    # usage as of the crossing: the reservation that reached each threshold included
    assert [by_percent[p]["spent_cents"] for p in (50, 80, 100)] == [1000, 1600, 2000], listed
    assert all(a["cap_cents"] == 2000 and a["window"] == a["created_at"][:10] for a in listed)
    described = httpx.get(f"{alert_host}/api/vault/keys/{key['key_id']}", headers=HEADERS, timeout=30).json()
    assert described["alerts_fired"].endswith(":50,80,100") and described["spent_cents"] == 2000

    assert thresholds(queued(azurite, key["key_id"])) == [50, 80, 100]  # one queue message each

    for _ in range(600):  # the webhook's first attempt got a 500: its retry delivers
        if len(thresholds([a for a in receiver.alerts() if a.get("key_id") == key["key_id"]])) >= 3:
            break
        time.sleep(0.1)
    mine = [(body, sig) for body, sig in receiver.got if json.loads(body).get("key_id") == key["key_id"]]
    assert sorted(json.loads(b)["threshold_percent"] for b, _ in mine) == [50, 80, 100]
    assert receiver.calls > len(receiver.got)  # the 500 was retried
    for body, signature in mine:
        assert verify(SECRET, body, signature), signature
        assert not verify("another-secret", body, signature)
        assert not verify(SECRET, body[:-1] + b" }", signature)  # a changed body fails


def test_a_revoke_and_a_held_charge_raise_alerts(alert_host: str) -> None:
    key = issue(alert_host, daily_usd_cap=100, approval_above_usd=10, alert_thresholds=[90])
    held = httpx.post(f"{alert_host}/v1/payment_intents", timeout=60, headers={
        "Authorization": f"Bearer {key['vault_key']}", "Idempotency-Key": "held-1"}, data={
        "amount": 5000, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
    assert held.status_code == 402
    assert httpx.delete(f"{alert_host}/api/vault/keys/{key['key_id']}", headers=HEADERS, timeout=30).status_code == 200
    assert httpx.delete(f"{alert_host}/api/vault/keys/{key['key_id']}", headers=HEADERS, timeout=30).status_code == 200
    alerts = httpx.get(f"{alert_host}/api/alerts", params={"key_id": key["key_id"]}, headers=HEADERS,
                       timeout=30).json()["data"]
    kinds = sorted(a["type"] for a in alerts)
    assert kinds == ["approval_requested", "key_revoked"], alerts  # the second revoke changed nothing
    requested = next(a for a in alerts if a["type"] == "approval_requested")
    assert requested["approval_id"] == held.json()["error"]["approval"] and requested["amount_cents"] == 5000
