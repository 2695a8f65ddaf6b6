"""Secrets stay secret: after the whole suite, nothing anywhere holds the Stripe secret
or a full vault key.

This module runs last (tests/proxy/conftest.py moves it to the end of the session). It
scans every devhost log in artifacts/, every log record the test process emitted (a
handler installed while this module is collected, i.e. before any test runs), every
entity in every table of the session's Azurite (audit rows, idempotency records with
stored response bodies, orchestration history), and the error bodies of a sweep of
failing requests through the proxy.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import httpx
import pytest

from devhost.config import host_keys
from devhost.services import Service
from tests.conftest import ARTIFACTS, FUNCTION_KEY, STRIPE_TEST_SECRET, AppStack
from tests.proxy.conftest import key_request

pytestmark = pytest.mark.integration

VAULT_KEY = re.compile(r"vk_[a-f0-9]{20}_[A-Za-z0-9]{40,}")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage() + (self.format(record) if record.exc_info else ""))
        except Exception:  # a malformed record is not a leak
            self.lines.append(str(record.msg))


_COLLECTOR = _Collector()
logging.getLogger().addHandler(_COLLECTOR)
for _name in ("spendgate", "devhost", "httpx", "proxy"):
    logging.getLogger(_name).setLevel(logging.DEBUG)


SYSTEM_KEY = host_keys({}).durabletask  # the Durable extension's system key (devhost's default, as in the tests)


def _leaks(text: str, *, system_key: bool = True) -> list[str]:
    found = [f"stripe secret at {i}" for i in [text.find(STRIPE_TEST_SECRET)] if i >= 0]
    found += [f"durable system key at {i}" for i in [text.find(SYSTEM_KEY)] if i >= 0 and system_key]
    found += [f"vault key {m.group()[:12]}…" for m in VAULT_KEY.finditer(text)]
    return found


def test_error_bodies_hold_no_secret(app_stack: AppStack) -> None:
    with httpx.Client(base_url=app_stack.url, timeout=30) as http:
        issued = http.post("/api/vault/keys", json=key_request(daily_usd_cap=1), headers=app_stack.admin_headers).json()
        vk = issued["vault_key"]
        forged = vk[:-6] + "AAAAAA"
        bodies = []
        for auth, method, path, body in [
            (forged, "POST", "/v1/payment_intents", "amount=100&currency=usd"),
            (vk, "POST", "/v1/payment_intents", "amount=1000&currency=usd"),
            (vk, "POST", "/v1/payment_intents", "amount=50&currency=usd&description=x"),  # localstripe 400
            (vk, "POST", "/v1/payment_intents", "amount=50&currency=usd&confirm=true"),  # localstripe 500
            (vk, "GET", "/v1/payment_intents/pi_missing", ""),  # localstripe 404
            (vk, "GET", "/v1/customers", ""),
            (STRIPE_TEST_SECRET, "GET", "/v1/payment_intents", ""),
        ]:
            r = http.request(method, "/api/stripe" + path, content=body or None,
                             headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/x-www-form-urlencoded"})
            assert r.status_code >= 400
            bodies.append(r.text + str(dict(r.headers)))
        http.delete(f"/api/vault/keys/{issued['key_id']}", headers=app_stack.admin_headers)
        r = http.get("/api/stripe/v1/payment_intents", headers={"Authorization": f"Bearer {vk}"})
        bodies.append(r.text + str(dict(r.headers)))
        bodies.append(http.get(f"/api/vault/keys/{issued['key_id']}", headers=app_stack.admin_headers).text)
    assert [(i, leak) for i, b in enumerate(bodies) for leak in _leaks(b)] == []


def test_billing_run_routes_never_hand_out_the_system_key(app_stack: AppStack) -> None:
    """Start, status, spend, stop and the run list: no body or header carries the Durable system key or a webhook
    URL (on Azure that key can terminate, purge or raise events on any instance)."""
    run_id = "secret-scan-" + uuid.uuid4().hex[:8]
    body = {"billing_period": "2026-06", "budget_usd": 10, "instance_id": run_id,
            "customers": [{"customer_id": "cus_missing", "amount_cents": 100}]}
    answers = []
    with httpx.Client(base_url=app_stack.url, timeout=30, headers=app_stack.admin_headers) as http:
        started = http.post("/api/billing/runs", json=body)
        assert started.status_code == 202, started.text
        assert started.json()["id"] == run_id and started.headers["Location"] == started.json()["status_url"]
        answers.append(started)
        for method, path in [("GET", f"/api/billing/runs/{run_id}"), ("GET", f"/api/billing/runs/{run_id}/spend"),
                             ("POST", f"/api/billing/runs/{run_id}/stop"), ("GET", "/api/billing/runs")]:
            answers.append(http.request(method, path))
    texts = [r.text + str(dict(r.headers)) for r in answers]
    assert [(i, leak) for i, t in enumerate(texts) for leak in _leaks(t)] == []
    assert [i for i, t in enumerate(texts) if "runtime/webhooks" in t] == []


def test_the_scanner_finds_what_it_looks_for() -> None:
    assert _leaks(f"x {STRIPE_TEST_SECRET} y") and _leaks("Bearer vk_" + "0a" * 10 + "_" + "Zz9" * 16)
    assert _leaks(f"https://app/runtime/webhooks/durabletask/instances/x?code={SYSTEM_KEY}")
    assert not _leaks("key_id=0a0a0a0a0a0a0a0a0a0a vk_… sk_***")


def test_no_log_line_holds_a_secret() -> None:
    problems = []
    for log in sorted(Path(ARTIFACTS).glob("*.log")):  # the app's own logs: no function key either
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            problems += [f"{log.name}:{n}: {leak}" for leak in _leaks(line)]
            problems += [f"{log.name}:{n}: function key"] if FUNCTION_KEY in line else []
    # The tests themselves call the durable webhooks with the system key (httpx logs those URLs), so the
    # test process's own log is checked for the Stripe secret and vault keys only; the app's logs above for all.
    problems += [f"test-process log: {leak}" for line in _COLLECTOR.lines for leak in _leaks(line, system_key=False)]
    assert problems == []
    assert _COLLECTOR.lines, "the collector saw no log records at all; is it installed?"


def test_no_table_entity_holds_a_secret(azurite: Service) -> None:
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(azurite.extra["connection_string"])
    problems, scanned = [], 0
    for table in service.list_tables():
        for entity in service.get_table_client(table.name).list_entities():
            scanned += 1
            problems += [f"{table.name}/{entity['PartitionKey']}/{entity['RowKey']}: {leak}"
                         for leak in _leaks(str(dict(entity)))]
    by_table: dict[str, int] = {}
    for p in problems:
        by_table[p.split("/")[0]] = by_table.get(p.split("/")[0], 0) + 1
    assert problems == [], f"secrets stored in tables (count per table): {by_table}; first: {problems[:3]}"
    assert scanned > 0
