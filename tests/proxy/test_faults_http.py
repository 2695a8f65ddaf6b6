"""Upstream faults over real HTTP: a devhost whose Stripe is the fault injector.

stripe-python (max_network_retries=3) is the client: it retries the proxy's
retryable answer with its own stable Idempotency-Key, and the proxy must turn that
into exactly one object and a settled reservation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import stripe

from devhost.services import REPO_ROOT, Service, start_devhost
from tests.conftest import FUNCTION_KEY, app_settings
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects
from tests.proxy.fault_upstream import FaultUpstream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fault(localstripe: Service) -> Iterator[FaultUpstream]:
    f = FaultUpstream(localstripe.url, sleep_seconds=4)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def faulty_app(azurite: Service, localstripe: Service, fault: FaultUpstream, artifacts_dir: Path) -> Iterator[Service]:
    env = app_settings(azurite, localstripe, STRIPE_API_BASE=fault.url, SPENDGATE_STRIPE_TIMEOUT_SECONDS="2")
    svc = start_devhost(REPO_ROOT, env, log_path=artifacts_dir / "devhost-faults.log", ready_path="/api/health")
    yield svc
    svc.stop()


@pytest.mark.parametrize("mode", ["sleep_after_forward", "drop_after_forward", "500_after_forward"])
def test_stripe_python_retry_after_an_upstream_fault_leaves_one_object(
    faulty_app: Service, fault: FaultUpstream, localstripe: Service, mode: str
) -> None:
    admin = {"x-functions-key": FUNCTION_KEY}
    key = httpx.post(f"{faulty_app.url}/api/vault/keys", json=key_request(daily_usd_cap=100), headers=admin).json()
    tag = new_tag()
    fault.arm(mode)
    client = stripe.StripeClient(key["vault_key"], base_addresses={"api": f"{faulty_app.url}/api/stripe"},
                                 max_network_retries=3)
    pi = client.v1.payment_intents.create(params=pi_params(2900, tag))
    objects = tagged_objects(localstripe.url, tag)
    assert [o["id"] for o in objects] == [pi.id]
    view = httpx.get(f"{faulty_app.url}/api/vault/keys/{key['key_id']}", headers=admin).json()
    assert (view["spent_cents"], view["pending_cents"]) == (2900, 0)
    rows = httpx.get(f"{faulty_app.url}/api/vault/keys/{key['key_id']}/audit", headers=admin).json()["data"]
    assert [(r["decision"], r["upstream_status"]) for r in reversed(rows)][-1] == ("replayed", 200)
    assert len({r["idempotency_key"] for r in rows}) == 1
