"""The async billing routes never block the worker's event loop, even when storage is slow.

Async functions run on the worker's one dispatcher loop (azure-functions-runtime's
`invocation_request`), so a blocking Table Storage call inside one stalls every other
invocation of the instance. Here the app's tables sit behind a relay that adds 250 ms to
every request, and devhost logs any invocation step that holds the loop past 150 ms
(`DEVHOST_LOOP_BLOCK_WARN_MS`); a route that calls storage on the loop shows up there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.relay import CountingRelay
from core.storage import azurite_connection_string
from devhost.services import REPO_ROOT, Service, start_devhost
from tests.billing.e2e import seed, start_run, unique_plan, wait_until
from tests.conftest import FUNCTION_KEY, STRIPE_TEST_SECRET, app_settings

pytestmark = pytest.mark.integration

HELD = re.compile(r"name='invoke (\w+)'.* took (\d+\.\d+) seconds")


@pytest.fixture(scope="module")
def slow_storage_app(azurite: Service, localstripe: Service, artifacts_dir: Path) -> Iterator[Service]:
    settings = app_settings(azurite, localstripe, DEVHOST_LOOP_BLOCK_WARN_MS="150")
    relay = CountingRelay(azurite.port, settings["SPENDGATE_TABLE_PREFIX"].encode(), delay=0.25).start()
    settings["AzureWebJobsStorage"] = azurite_connection_string(
        blob=int(azurite.extra["blob_port"]), queue=int(azurite.extra["queue_port"]), table=relay.port
    )
    log_path = artifacts_dir / "devhost-slow-storage.log"
    log_path.unlink(missing_ok=True)
    app = start_devhost(REPO_ROOT, settings, log_path=log_path, ready_path="/api/health")
    yield app
    app.stop()
    relay.stop()


def test_no_async_route_holds_the_loop_while_storage_is_slow(slow_storage_app: Service, localstripe: Service) -> None:
    base, headers = slow_storage_app.url, {"x-functions-key": FUNCTION_KEY}
    [customer] = seed(localstripe.url, STRIPE_TEST_SECRET, 1, unique_plan("nonblocking"))
    body = {"billing_period": "2026-06", "budget_usd": 10, "customers": [{"customer_id": customer, "amount_cents": 500}]}
    run_id = start_run(base, headers, body)
    wait_until(base, headers, run_id, timeout=180)
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        for method, path in [("GET", f"/api/billing/runs/{run_id}"), ("GET", f"/api/billing/runs/{run_id}/spend"),
                             ("POST", f"/api/billing/runs/{run_id}/stop"), ("GET", "/api/billing/runs")]:
            assert http.request(method, path).status_code == 200, path
    assert slow_storage_app.log_path is not None
    held = HELD.findall(slow_storage_app.log_path.read_text())
    assert held == [], f"async functions held the worker's event loop: {held}"
