"""The console's routes over real HTTP on devhost: page, assets and the billing-run list."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.settings import Settings
from core.storage import table_service
from proxy.vault import VaultService
from tests.billing.e2e import seed, start_run, unique_plan, wait_until
from tests.conftest import STRIPE_TEST_SECRET, AppStack

pytestmark = pytest.mark.integration


def test_page_and_assets_are_served_anonymously_with_their_types(app_stack: AppStack) -> None:
    page = httpx.get(f"{app_stack.url}/api/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "/api/console/assets/console.js" in page.text
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = httpx.get(f"{app_stack.url}/api/console/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)


@pytest.mark.parametrize("name", ["index.html", "assets.py", "..%2Fassets.py", "..%2F..%2Fhost.json", "nope.js"])
def test_only_whitelisted_assets_exist(app_stack: AppStack, name: str) -> None:
    resp = httpx.get(f"{app_stack.url}/api/console/assets/{name}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_run_list_needs_the_function_key_and_checks_its_parameters(app_stack: AppStack) -> None:
    url = f"{app_stack.url}/api/billing/runs"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-functions-key": "wrong"}).status_code == 401
    bad = httpx.get(url, params={"limit": "0"}, headers=app_stack.admin_headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    bad = httpx.get(url, params={"continuation": "garbage"}, headers=app_stack.admin_headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "continuation"


def test_run_list_pages_newest_first_without_per_item_results(app_stack: AppStack) -> None:
    customers = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 1, unique_plan("console-list"))
    body = {"billing_period": "2026-06", "budget_usd": 10, "customers": [{"customer_id": customers[0], "amount_cents": 500}]}
    older = start_run(app_stack.url, app_stack.admin_headers, body)
    wait_until(app_stack.url, app_stack.admin_headers, older)
    time.sleep(1.1)  # the Durable host reports created times to the second
    # The next month: a customer is charged once per billing period (and purpose).
    newer = start_run(app_stack.url, app_stack.admin_headers, {**body, "billing_period": "2026-07"})
    wait_until(app_stack.url, app_stack.admin_headers, newer)

    seen: list[dict] = []
    token = None
    while True:
        params = {"limit": "1", **({"continuation": token} if token else {})}
        resp = httpx.get(f"{app_stack.url}/api/billing/runs", params=params, headers=app_stack.admin_headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["data"]) <= 1
        seen += page["data"]
        token = page["continuation"]
        if not token:
            break
    ids = [r["instance_id"] for r in seen]
    assert len(ids) == len(set(ids))
    assert ids.index(newer) < ids.index(older)
    row = next(r for r in seen if r["instance_id"] == newer)
    assert row["runtime_status"] == "Completed"
    assert row["progress"]["done"] == 1 and row["output"]["spent_cents"] == 500
    assert "items" not in row["output"]
    assert all(r["name"] == "billing_run" for r in seen)


def test_a_thousand_keys_page_completely_in_bounded_pages(app_stack: AppStack) -> None:
    """What the console's keys table pages through: 1,000 keys, 100 a page, none lost or repeated."""
    settings = Settings.from_mapping(app_stack.settings)
    vault = VaultService(table_service(settings), settings)
    label = f"console-1000/{time.time_ns()}"
    request = {"vendor": "stripe", "label": label, "daily_usd_cap": 1,
               "allowed_endpoints": ["POST /v1/payment_intents"], "expires_in": "1h"}
    with ThreadPoolExecutor(16) as pool:
        issued = set(pool.map(lambda _: vault.issue(request)["key_id"], range(1000)))
    seen: list[str] = []
    pages, continuation = 0, None
    with httpx.Client(base_url=app_stack.url, headers=app_stack.admin_headers, timeout=30) as admin:
        while True:
            params = {"label": label, "limit": 100, **({"continuation": continuation} if continuation else {})}
            page = admin.get("/api/vault/keys", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            assert len(body["data"]) <= 100
            seen += [k["key_id"] for k in body["data"]]
            pages += 1
            continuation = body["continuation"]
            if not continuation:
                break
    assert len(seen) == len(set(seen)) == 1000 and set(seen) == issued
    assert pages <= 11


def _list_all(app_stack: AppStack, limit: int) -> list[dict]:
    rows: list[dict] = []
    token = None
    while True:
        params = {"limit": str(limit), **({"continuation": token} if token else {})}
        resp = httpx.get(f"{app_stack.url}/api/billing/runs", params=params, headers=app_stack.admin_headers, timeout=60)
        assert resp.status_code == 200, resp.text
        rows += resp.json()["data"]
        token = resp.json()["continuation"]
        if not token:
            return rows


def test_250_runs_with_their_batches_are_each_listed_once_newest_first(app_stack: AppStack) -> None:
    """250 runs, each with a lane and a batch sub-orchestration: 750 instances, seven and a half times the
    Durable extension's first page of 100 (ids in random order): every run is listed once, newest first."""
    body = {"billing_period": "2026-06", "budget_usd": 1, "customers": [{"customer_id": "cus_gone", "amount_cents": 100}]}
    started = [
        start_run(app_stack.url, app_stack.admin_headers, {**body, "instance_id": f"list-{uuid.uuid4().hex}"})
        for _ in range(250)
    ]
    deadline = time.monotonic() + 600
    while True:
        rows = [r for r in _list_all(app_stack, 100) if r["instance_id"] in set(started)]
        if all(r["runtime_status"] == "Completed" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert [r["instance_id"] for r in rows] == started[::-1]
    assert all(r["name"] == "billing_run" for r in rows)
