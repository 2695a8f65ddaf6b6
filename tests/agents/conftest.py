"""Fixtures for the agent tests: the real proxy on devhost (Azurite + localstripe), a fake Foundry.

Keys are issued the way an operator would, through `POST /api/vault/keys` on the running
app; customers are real localstripe customers with a card; assertions count the payment
intents localstripe holds for a customer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from agents.tools import BillingTools
from devhost.fake_foundry import FakeFoundry
from devhost.seed import create_customer, iter_objects
from tests.conftest import STRIPE_TEST_SECRET, AppStack

BILLING_ENDPOINTS = ["POST /v1/payment_intents"]
AUDIT_ENDPOINTS = [
    "GET /v1/payment_intents/*",
    "GET /v1/payment_intents",
    "GET /v1/charges/*",
    "GET /v1/charges",
    "GET /v1/customers/*",
    "GET /v1/payment_methods",
    "GET /v1/invoices/*",
]


@dataclass
class AgentStack:
    """The running app plus helpers to issue keys, make customers and count their payments."""

    app: AppStack
    _tools: list[BillingTools] = field(default_factory=list)

    @property
    def proxy_url(self) -> str:
        return f"{self.app.url}/api/stripe"

    def issue_key(self, role: str, endpoints: list[str], daily_usd_cap: float = 500, **extra: Any) -> dict[str, Any]:
        body = {
            "vendor": "stripe",
            "label": f"agents-test/{role}/{uuid.uuid4().hex[:8]}",
            "daily_usd_cap": daily_usd_cap,
            "allowed_endpoints": endpoints,
            "expires_in": "1h",
            **extra,
        }
        resp = httpx.post(f"{self.app.url}/api/vault/keys", json=body, headers=self.app.admin_headers, timeout=30)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def billing_key(self, daily_usd_cap: float = 500) -> dict[str, Any]:
        return self.issue_key("billing", BILLING_ENDPOINTS, daily_usd_cap)

    def audit_key(self) -> dict[str, Any]:
        return self.issue_key("audit", AUDIT_ENDPOINTS, 0.01)

    def revoke(self, key_id: str) -> None:
        resp = httpx.delete(f"{self.app.url}/api/vault/keys/{key_id}", headers=self.app.admin_headers, timeout=30)
        assert resp.status_code == 200, resp.text

    def audit_rows(self, key_id: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.app.url}/api/vault/keys/{key_id}/audit", headers=self.app.admin_headers, timeout=30)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["data"])

    def tools(self, *, billing: dict[str, Any] | None = None, audit: dict[str, Any] | None = None) -> BillingTools:
        """BillingTools for a role holding the given keys (closed at teardown)."""
        tools = BillingTools(
            self.proxy_url,
            billing_key=billing and billing["vault_key"],
            audit_key=audit and audit["vault_key"],
            backoff_seconds=0.05,
        )
        self._tools.append(tools)
        return tools

    def new_customer(self) -> str:
        with httpx.Client(base_url=self.app.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
            return create_customer(client, name=f"Agent test {uuid.uuid4().hex[:6]}")

    def new_invoice(self, customer_id: str) -> str:
        """A real invoice of the customer. localstripe makes invoices only for subscriptions (its
        `POST /v1/invoices` answers 404 "No upcoming invoices"), and pays it with one payment intent."""
        plan = f"plan_{uuid.uuid4().hex[:8]}"
        with httpx.Client(base_url=self.app.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
            client.post("/v1/plans", data={"id": plan, "amount": 2900, "currency": "usd", "interval": "month",
                                           "product[name]": "Pro"}).raise_for_status()
            created = client.post("/v1/subscriptions", data={"customer": customer_id, "items[0][plan]": plan})
            return str(created.raise_for_status().json()["latest_invoice"])

    def payment_intents(self, customer_id: str) -> list[dict[str, Any]]:
        """Every payment intent localstripe holds for `customer_id` (read directly, not via the proxy)."""
        return [pi for pi in iter_objects(self.app.localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
                if pi.get("customer") == customer_id]


@pytest.fixture
def stack(app_stack: AppStack) -> Iterator[AgentStack]:
    s = AgentStack(app_stack)
    yield s
    for tools in s._tools:
        tools.close()


@pytest.fixture
def foundry() -> Iterator[FakeFoundry]:
    with FakeFoundry() as fake:
        yield fake
