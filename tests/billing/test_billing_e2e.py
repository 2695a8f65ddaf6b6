"""Billing runs end to end: devhost running the real app, Azurite, localstripe, over HTTP.

Every assertion is on real state: Stripe objects in localstripe (tagged with the run's
instance id and item index), the run's output and the proxy's audit totals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devhost.config import host_keys
from devhost.services import REPO_ROOT, Service, free_port, start_devhost
from tests.billing.e2e import seed, start_run, succeeded_objects, unique_plan, wait_until
from tests.billing.faultproxy import FAIL_AFTER, IN_USE_BEFORE, PASS, FaultProxy, Seen
from tests.conftest import STRIPE_TEST_SECRET, AppStack, app_settings

pytestmark = pytest.mark.integration


def _own_devhost(azurite: Service, localstripe: Service, name: str, port: int, **overrides: str) -> Service:
    """A devhost of the test's own (fault injection, kill and restart), proxy URL explicit."""
    settings = {
        **app_settings(azurite, localstripe),
        "SPENDGATE_PROXY_URL": f"http://127.0.0.1:{port}/api/stripe",
        **overrides,
    }
    log = REPO_ROOT / "artifacts" / f"devhost-billing-{name}.log"
    return start_devhost(REPO_ROOT, settings, port=port, log_path=log, ready_path="/api/health")


@pytest.fixture(scope="module")
def pro_200(app_stack: AppStack) -> str:
    """200 chargeable customers on a plan of their own; returns the plan."""
    plan = unique_plan("pro200")
    seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 200, plan)
    return plan


def query_run(plan: str, budget_usd: float, **extra: Any) -> dict[str, Any]:
    """A run over the plan's customers. Each run has a purpose of its own: the tests bill the same
    200 customers in several runs, and a customer is charged once per period and purpose."""
    return {
        "billing_period": "2026-06",
        "customer_query": {"metadata": {"plan": plan}, "amount_cents": 2900},
        "budget_usd": budget_usd,
        "purpose": f"test-{uuid.uuid4().hex[:12]}",
        **extra,
    }


def test_full_budget_charges_all_200_exactly_once(app_stack: AppStack, pro_200: str) -> None:
    run_id = start_run(app_stack.url, app_stack.admin_headers, query_run(pro_200, 5800))
    run = wait_until(app_stack.url, app_stack.admin_headers, run_id)
    assert run["runtime_status"] == "Completed", run
    out = run["output"]
    assert out["counts"]["charged"] == 200 and out["total"] == 200
    assert out["spent_cents"] == 580000 == out["cap_cents"]
    objects = succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id)
    assert sum(objects.values()) == 200 and set(objects) == set(range(200))
    spend = httpx.get(f"{app_stack.url}/api/billing/runs/{run_id}/spend", headers=app_stack.admin_headers).json()
    assert spend["spent_cents"] == 580000 and spend["pending_cents"] == 0
    # Both keys are revoked at the end; the run's output names them by id only.
    for key_id in filter(None, out["key_ids"].values()):
        key = httpx.get(f"{app_stack.url}/api/vault/keys/{key_id}", headers=app_stack.admin_headers).json()
        assert key["status"] == "revoked"
    assert "vk_" not in str(run)


def test_half_budget_charges_exactly_100_and_skips_the_rest(app_stack: AppStack, pro_200: str) -> None:
    run_id = start_run(app_stack.url, app_stack.admin_headers, query_run(pro_200, 2900))
    out = wait_until(app_stack.url, app_stack.admin_headers, run_id)["output"]
    assert out["counts"]["charged"] == 100
    assert out["counts"]["cap_exceeded"] + out["skipped_by_reason"].get("cap_exceeded", 0) == 100
    assert out["counts"]["skipped"] == out["skipped_by_reason"]["cap_exceeded"]
    assert out["spent_cents"] <= out["cap_cents"] == 290000
    assert sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values()) == 100


def test_a_query_pages_through_more_than_100_customers(app_stack: AppStack, pro_200: str) -> None:
    # The matching customers sit on different pages of a listing of > 100 customers
    # (localstripe has no search, so every customer is listed and filtered client-side).
    plan = unique_plan("pages")
    first = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 1, plan)
    seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 110, unique_plan("filler"))
    last = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 1, plan)
    run_id = start_run(app_stack.url, app_stack.admin_headers, query_run(plan, 100, endpoint="charges"))
    out = wait_until(app_stack.url, app_stack.admin_headers, run_id)["output"]
    assert out["customer_pages"] >= 3  # 200 + 112 customers at least, 100 a page
    assert out["counts"]["charged"] == 2
    assert {i["customer_id"] for i in out["items"]} == {*first, *last}
    assert sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id, "charges").values()) == 2


def test_a_declined_card_is_reported_and_the_run_continues(app_stack: AppStack) -> None:
    plan = unique_plan("decline")
    ids = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 9, plan, declining=1)
    body = {
        "billing_period": "2026-06",
        "budget_usd": 1000,
        "max_parallel": 4,
        "customers": [{"customer_id": c, "amount_cents": 2900} for c in ids],
    }
    out = wait_until(app_stack.url, app_stack.admin_headers, start_run(app_stack.url, app_stack.admin_headers, body))
    out = out["output"]
    assert out["counts"]["declined"] == 1 and out["counts"]["charged"] == 9
    declined = [i for i in out["items"] if i["outcome"] == "declined"]
    assert declined[0]["customer_id"] == ids[-1]


def test_bad_bodies_and_existing_instance_ids(app_stack: AppStack, pro_200: str) -> None:
    url, headers = f"{app_stack.url}/api/billing/runs", app_stack.admin_headers
    bad = httpx.post(url, json={"billing_period": "June", "budget_usd": 1, "customers": []}, headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "billing_period"
    assert httpx.post(url, content=b"{nope", headers=headers).status_code == 400
    assert httpx.post(url, json=query_run(pro_200, 1)).status_code == 401  # function auth
    run_id = f"dup-{uuid.uuid4().hex[:8]}"
    body = {
        "billing_period": "2026-06",
        "budget_usd": 100,
        "instance_id": run_id,
        "customers": [{"customer_id": "cus_missing", "amount_cents": 100}],
        "endpoint": "charges",
    }
    assert start_run(app_stack.url, headers, body) == run_id
    again = httpx.post(url, json=body, headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_exists"
    assert wait_until(app_stack.url, headers, run_id)["output"]["counts"]["invalid"] == 1
    # Purging the history does not free the id: the run's keys still carry its label.
    webhook = f"{app_stack.url}/runtime/webhooks/durabletask/instances/{run_id}"
    assert httpx.delete(webhook).status_code == 401  # the webhooks need the extension's system key, as on Azure
    purged = httpx.delete(webhook, params={"code": host_keys({}).durabletask})
    assert purged.status_code == 200, purged.text
    assert httpx.get(f"{url}/{run_id}", headers=headers).status_code == 404
    after_purge = httpx.post(url, json=body, headers=headers)
    assert after_purge.status_code == 409 and after_purge.json()["error"]["code"] == "run_exists"
    assert httpx.get(f"{url}/nope-{run_id}", headers=headers).status_code == 404


def test_revoking_the_key_mid_run_stops_charging(app_stack: AppStack, pro_200: str) -> None:
    base, headers = app_stack.url, app_stack.admin_headers
    run_id = start_run(base, headers, query_run(pro_200, 5800, max_parallel=10))
    run = wait_until(base, headers, run_id, done_at_least=20)
    key_id = httpx.get(f"{base}/api/vault/keys", params={"label": f"azure-durable/{run_id}"}, headers=headers).json()
    revoked = httpx.delete(f"{base}/api/vault/keys/{key_id['data'][0]['key_id']}", headers=headers)
    assert revoked.status_code == 200
    at_revoke = sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values())
    run = wait_until(base, headers, run_id)
    out = run["output"]
    assert sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values()) == at_revoke
    assert out["counts"]["charged"] == at_revoke < 200
    assert out["skipped_by_reason"].get("revoked", 0) > 0


def test_stop_revokes_then_terminates(app_stack: AppStack, pro_200: str) -> None:
    base, headers = app_stack.url, app_stack.admin_headers
    run_id = start_run(base, headers, query_run(pro_200, 5800, max_parallel=10))
    wait_until(base, headers, run_id, done_at_least=20)
    stopped = httpx.post(f"{base}/api/billing/runs/{run_id}/stop", headers=headers, timeout=30)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["revoked_key_ids"]
    at_stop = sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values())
    assert wait_until(base, headers, run_id)["runtime_status"] == "Terminated"
    assert sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values()) == at_stop < 200
    # No output after a stop: the per-item list comes from history and the audit log and matches Stripe.
    described = httpx.get(f"{base}/api/billing/runs/{run_id}", headers=headers, timeout=30).json()
    charged = [i for i in described["items"] if i["outcome"] == "charged"]
    assert described["items_source"] == "history+audit"
    assert len(charged) == sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values())
    assert {i["item_index"] for i in described["items"]} >= {i["item_index"] for i in charged}


# --- runs on a devhost of their own ------------------------------------------------------


def stripe_rule(seen: Seen, attempt: int) -> str:
    """Stripe creates the object, then answers 500, for every 7th item's first attempt."""
    if seen.method == "POST" and seen.item_index is not None and seen.item_index % 7 == 1 and attempt == 1:
        return FAIL_AFTER
    return PASS


def proxy_rule(seen: Seen, attempt: int) -> str:
    """Between activity and proxy: failures after the proxy succeeded, and a transient 409."""
    if seen.method != "POST" or seen.item_index is None:
        return PASS
    if seen.item_index % 7 == 3 and attempt <= 3:  # every try of the first activity execution → it raises
        return FAIL_AFTER
    if seen.item_index % 7 == 5 and attempt == 1:
        return IN_USE_BEFORE
    return PASS


@pytest.fixture
def faulty_stack(app_stack: AppStack) -> Iterator[tuple[Service, FaultProxy, FaultProxy]]:
    port = free_port()
    to_stripe = FaultProxy(app_stack.localstripe.url, stripe_rule).start()
    to_proxy = FaultProxy(f"http://127.0.0.1:{port}", proxy_rule).start()
    host = _own_devhost(
        app_stack.azurite,
        app_stack.localstripe,
        "faults",
        port,
        STRIPE_API_BASE=to_stripe.url,
        SPENDGATE_PROXY_URL=f"{to_proxy.url}/api/stripe",
    )
    yield host, to_stripe, to_proxy
    host.stop()
    to_stripe.stop()
    to_proxy.stop()


def test_injected_faults_change_no_totals_and_duplicate_nothing(
    app_stack: AppStack, faulty_stack: tuple[Service, FaultProxy, FaultProxy]
) -> None:
    host, to_stripe, to_proxy = faulty_stack
    plan = unique_plan("faults")
    ids = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 60, plan)
    body = {
        "billing_period": "2026-06",
        "budget_usd": 60 * 29,
        "max_parallel": 20,
        "customers": [{"customer_id": c, "amount_cents": 2900} for c in ids],
    }
    run_id = start_run(host.url, app_stack.admin_headers, body)
    run = wait_until(host.url, app_stack.admin_headers, run_id, timeout=150)
    assert run["runtime_status"] == "Completed", run
    out = run["output"]
    assert to_stripe.injected[FAIL_AFTER] > 0
    assert to_proxy.injected[FAIL_AFTER] > 0 and to_proxy.injected[IN_USE_BEFORE] > 0
    assert out["counts"]["charged"] == 60 and out["spent_cents"] == 60 * 2900
    objects = succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id)
    assert max(objects.values()) == 1, "a duplicate charge"
    assert sum(objects.values()) == 60


def test_a_devhost_killed_mid_run_completes_after_restart_without_duplicates(app_stack: AppStack) -> None:
    plan = unique_plan("kill")
    seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 100, plan)
    port = free_port()
    # Same tables after the restart; a shorter Stripe timeout shortens the proxy's in-flight
    # lease (2 x 8 s + 10 s) that requests abandoned by the kill hold until a retry takes over
    # (the batch is started again 30 s after it first failed: see BATCH_RETRY_DELAYS_SECONDS).
    same = {"SPENDGATE_TABLE_PREFIX": "sg" + uuid.uuid4().hex[:10], "SPENDGATE_STRIPE_TIMEOUT_SECONDS": "8"}
    host = _own_devhost(app_stack.azurite, app_stack.localstripe, "kill1", port, **same)
    try:
        run_id = start_run(host.url, app_stack.admin_headers, query_run(plan, 2900, max_parallel=10))
        wait_until(host.url, app_stack.admin_headers, run_id, done_at_least=30)
    finally:
        host.kill()
    host = _own_devhost(app_stack.azurite, app_stack.localstripe, "kill2", port, **same)
    try:
        run = wait_until(host.url, app_stack.admin_headers, run_id, timeout=240)
    finally:
        host.stop()
    assert run["runtime_status"] == "Completed", run
    assert run["output"]["counts"]["charged"] == 100
    objects = succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id)
    assert max(objects.values()) == 1 and sum(objects.values()) == 100
