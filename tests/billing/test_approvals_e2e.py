"""Issue 16, point 1 over HTTP: billing runs that wait for a person (devhost + Azurite + localstripe).

A devhost of this module's own runs with `SPENDGATE_APPROVAL_THRESHOLD_USD=1000`. Every assertion is
on real state: the run's status and output, the vault's keys under the run's label, payment intents
in localstripe, and the decision row. Timeouts use the run's own shorter `approval_timeout`; no
assertion is about time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devhost.seed import create_customer, iter_objects
from devhost.services import Service, free_port
from tests.billing.e2e import get_run, start_run, unique_plan, wait_until
from tests.billing.test_billing_e2e import _own_devhost
from tests.conftest import FUNCTION_KEY, STRIPE_TEST_SECRET

pytestmark = pytest.mark.integration
HEADERS = {"x-functions-key": FUNCTION_KEY}


@pytest.fixture(scope="module")
def approval_host(azurite: Service, localstripe: Service) -> Iterator[str]:
    port = free_port()
    svc = _own_devhost(azurite, localstripe, "approvals", port, SPENDGATE_APPROVAL_THRESHOLD_USD="1000")
    yield svc.url
    svc.stop()


@pytest.fixture(scope="module")
def customers(localstripe: Service) -> list[str]:
    plan = unique_plan("approve")
    with httpx.Client(base_url=localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
        return [create_customer(client, name=f"{plan} {i}", plan=plan) for i in range(3)]


def body(customers: list[str], budget: float, **extra: Any) -> dict[str, Any]:
    return {"billing_period": "2026-07", "budget_usd": budget, "purpose": unique_plan("p"),
            "customers": [{"customer_id": c, "amount_cents": 2900} for c in customers], **extra}


def waiting(base: str, run_id: str) -> dict[str, Any]:
    """The run once its orchestrator waits for the decision (its custom status says so)."""
    for _ in range(600):
        run = get_run(base, HEADERS, run_id)
        if (run.get("progress") or {}).get("status") == "awaiting_approval":
            return run
        assert run["runtime_status"] in ("Pending", "Running"), run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never waited for approval: {run}")


def keys_of(base: str, run_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{base}/api/vault/keys", params={"label": f"azure-durable/{run_id}"}, headers=HEADERS, timeout=30)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def paid_for(localstripe: Service, run_id: str) -> list[dict[str, Any]]:
    return [pi for pi in iter_objects(localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
            if (pi.get("metadata") or {}).get("orchestration_id") == run_id and pi.get("status") == "succeeded"]


def decide(base: str, run_id: str, what: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}/api/billing/runs/{run_id}/{what}", headers={**HEADERS, **kwargs.pop("headers", {})},
                      json=kwargs or None, timeout=30)


def test_a_run_above_the_threshold_waits_without_a_key_then_is_approved_and_charges(
    approval_host: str, customers: list[str], localstripe: Service
) -> None:
    resp = httpx.post(f"{approval_host}/api/billing/runs", json=body(customers, 1000), headers=HEADERS, timeout=30)
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["status"] == "awaiting_approval" and started["approval"]["expires_at"]
    run_id = started["id"]
    run = waiting(approval_host, run_id)
    assert run["approval"]["waiting"] is True and run["approval"]["decision"] is None
    assert keys_of(approval_host, run_id) == []  # no vault key exists while it waits

    ok = decide(approval_host, run_id, "approve", headers={"X-MS-CLIENT-PRINCIPAL-NAME": "ops@example.com"},
                approver="ignored-when-signed-in", reason="June invoices")
    assert ok.status_code == 200, ok.text
    assert ok.json()["approval"]["decision"] == "approved" and ok.json()["approval"]["by"] == "ops@example.com"

    done = wait_until(approval_host, HEADERS, run_id)
    assert done["runtime_status"] == "Completed", done
    out = done["output"]
    assert out["counts"]["charged"] == 3 and out["stopped"] is None, out
    assert out["approval"]["by"] == "ops@example.com" and out["approval"]["reason"] == "June invoices"
    assert len(paid_for(localstripe, run_id)) == 3
    assert [k["status"] for k in keys_of(approval_host, run_id)] == ["revoked"]  # issued after approval, then revoked

    again = decide(approval_host, run_id, "approve", approver="someone-else")
    assert again.status_code == 409 and again.json()["error"]["code"] == "approval_not_pending"
    assert again.json()["run"]["approval"]["decision"] == "approved"


def test_a_rejected_run_charges_nothing_and_never_gets_a_key(
    approval_host: str, customers: list[str], localstripe: Service
) -> None:
    run_id = start_run(approval_host, HEADERS, body(customers, 5000))
    waiting(approval_host, run_id)
    no_one = decide(approval_host, run_id, "reject")
    assert no_one.status_code == 400 and no_one.json()["error"]["param"] == "approver"
    resp = decide(approval_host, run_id, "reject", approver="finance-lead", reason="wrong amounts")
    assert resp.status_code == 200, resp.text
    done = wait_until(approval_host, HEADERS, run_id)
    assert done["runtime_status"] == "Completed"
    assert done["output"]["stopped"] == "rejected" and done["output"]["counts"]["skipped"] == 3
    assert done["output"]["approval"] == {"decision": "rejected", "by": "finance-lead", "reason": "wrong amounts",
                                          "at": done["output"]["approval"]["at"]}
    assert keys_of(approval_host, run_id) == [] and paid_for(localstripe, run_id) == []
    late = decide(approval_host, run_id, "approve", approver="x")
    assert late.status_code == 409 and late.json()["run"]["approval"]["decision"] == "rejected"


def test_a_run_nobody_approves_times_out_and_a_late_approve_is_refused(
    approval_host: str, customers: list[str], localstripe: Service
) -> None:
    """Below the threshold, but asking for approval explicitly, with a window of 2 s."""
    run_id = start_run(approval_host, HEADERS, body(customers, 100, require_approval=True, approval_timeout="2s"))
    done = wait_until(approval_host, HEADERS, run_id)
    assert done["runtime_status"] == "Completed"
    assert done["output"]["stopped"] == "approval_timeout" and done["output"]["approval"]["decision"] == "approval_timeout"
    assert keys_of(approval_host, run_id) == [] and paid_for(localstripe, run_id) == []
    late = decide(approval_host, run_id, "approve", approver="ops")
    assert late.status_code == 409 and late.json()["run"]["approval"]["decision"] == "approval_timeout"


def test_a_run_below_the_threshold_charges_at_once_and_cannot_be_approved(
    approval_host: str, customers: list[str]
) -> None:
    resp = httpx.post(f"{approval_host}/api/billing/runs", json=body(customers[:1], 999.99), headers=HEADERS,
                      timeout=30)
    assert resp.status_code == 202 and "approval" not in resp.json()
    done = wait_until(approval_host, HEADERS, resp.json()["id"])
    assert done["output"]["counts"]["charged"] == 1
    refused = decide(approval_host, resp.json()["id"], "approve", approver="ops")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "approval_not_pending"


def test_approve_after_stop_is_refused_and_approve_stop_races_leave_no_live_key(
    approval_host: str, customers: list[str], localstripe: Service
) -> None:
    run_id = start_run(approval_host, HEADERS, body(customers, 1000))
    waiting(approval_host, run_id)
    assert httpx.post(f"{approval_host}/api/billing/runs/{run_id}/stop", headers=HEADERS, timeout=30).status_code == 200
    late = decide(approval_host, run_id, "approve", approver="ops")
    assert late.status_code == 409 and late.json()["run"]["approval"]["decision"] == "stopped"
    assert keys_of(approval_host, run_id) == [] and paid_for(localstripe, run_id) == []

    races = [start_run(approval_host, HEADERS, body(customers, 1000)) for _ in range(6)]
    for run_id in races:
        waiting(approval_host, run_id)
    with ThreadPoolExecutor(max_workers=12) as pool:
        approvals = [pool.submit(decide, approval_host, r, "approve", approver="ops") for r in races]
        stops = [pool.submit(httpx.post, f"{approval_host}/api/billing/runs/{r}/stop", headers=HEADERS, timeout=30)
                 for r in races]
        answers = [(a.result(), s.result()) for a, s in zip(approvals, stops, strict=True)]
    for run_id, (approve, stop) in zip(races, answers, strict=True):
        assert stop.status_code == 200, stop.text
        assert approve.status_code in (200, 409), approve.text
        keys = keys_of(approval_host, run_id)
        assert all(k["status"] == "revoked" for k in keys), keys  # a key issued after the approval was revoked
        if approve.status_code == 409:
            assert keys == [] and paid_for(localstripe, run_id) == []  # the stop came first: never a key
        run = get_run(approval_host, HEADERS, run_id)
        assert run["runtime_status"] in ("Terminated", "Completed"), run


def test_a_run_its_cap_stops_raises_an_alert(approval_host: str, customers: list[str]) -> None:
    """Three $29 customers on a $58 budget: two are charged, the run stops for its cap and says so once."""
    run_id = start_run(approval_host, HEADERS, {**body(customers, 58), "max_parallel": 1})
    done = wait_until(approval_host, HEADERS, run_id)
    assert done["output"]["stopped"] == "cap_exceeded" and done["output"]["counts"]["charged"] == 2, done["output"]
    alerts = httpx.get(f"{approval_host}/api/alerts", params={"run_id": run_id}, headers=HEADERS, timeout=30).json()
    stopped = [a for a in alerts["data"] if a["type"] == "run_stopped_by_cap"]
    assert len(stopped) == 1 and stopped[0]["spent_cents"] == 5800 and stopped[0]["cap_cents"] == 5800, alerts
