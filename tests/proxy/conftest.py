"""Fixtures for the proxy tests: the vault and pipeline on real Azurite + localstripe."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient

from core.settings import Settings
from core.storage import table_service
from devhost.seed import iter_objects
from devhost.services import Service
from proxy.forward import ProxyDeps
from proxy.vault import VaultService
from tests.conftest import STRIPE_TEST_SECRET, app_settings

PI_ALLOWLIST = ["POST /v1/payment_intents", "GET /v1/payment_intents/*", "GET /v1/payment_intents", "POST /v1/refunds"]


@dataclass
class Domain:
    """The plain domain functions wired to real services (no HTTP host)."""

    settings: Settings
    tables: TableServiceClient
    stripe_http: httpx.Client
    vault: VaultService
    deps: ProxyDeps
    localstripe: Service


@pytest.fixture(scope="module")
def domain(azurite: Service, localstripe: Service) -> Iterator[Domain]:
    settings = Settings.from_mapping(app_settings(azurite, localstripe, SPENDGATE_STRIPE_TIMEOUT_SECONDS="5"))
    tables = table_service(settings)
    http = httpx.Client(base_url=localstripe.url, timeout=5)
    yield Domain(settings, tables, http, VaultService(tables, settings, stripe_http=http),
                 ProxyDeps.build(tables, http, settings), localstripe)
    http.close()


def key_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "vendor": "stripe", "label": f"test/{uuid.uuid4().hex[:8]}", "daily_usd_cap": 500,
        "allowed_endpoints": PI_ALLOWLIST, "expires_in": "2h",
    }
    body.update(overrides)
    return body


def pi_params(amount: int, tag: str, **extra: str) -> dict[str, str]:
    """Form params for a payment intent that localstripe confirms at once."""
    return {"amount": str(amount), "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
            "metadata[test_tag]": tag, **extra}


def tagged_objects(base_url: str, tag: str, resource: str = "payment_intents") -> list[dict[str, Any]]:
    """Objects in localstripe carrying metadata[test_tag]=tag (pages through everything)."""
    return [o for o in iter_objects(base_url, STRIPE_TEST_SECRET, resource)
            if (o.get("metadata") or {}).get("test_tag") == tag]


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrets scan (tests/test_zz_secrets.py) must see the whole session: run it last."""
    last = [i for i in items if i.nodeid.startswith("tests/test_zz_secrets.py")]
    items[:] = [i for i in items if i not in last] + last
