"""`GET /api/health`: 200 when storage and Stripe answer, 503 naming the part that is down."""

from __future__ import annotations

import json

import azure.functions as func
import httpx
import pytest
from azure.data.tables import TableServiceClient

from core.storage import azurite_connection_string
from devhost.services import Service, free_port
from proxy.health import check_health, health

pytestmark = pytest.mark.integration


def test_health_names_the_part_that_is_down(azurite: Service, localstripe: Service) -> None:
    live_tables = TableServiceClient.from_connection_string(azurite.extra["connection_string"])
    dead_port = free_port()
    dead_tables = TableServiceClient.from_connection_string(
        azurite_connection_string(blob=dead_port, queue=dead_port, table=dead_port),
        retry_total=0, connection_timeout=2,
    )
    with httpx.Client(base_url=localstripe.url) as live_stripe, \
            httpx.Client(base_url=f"http://127.0.0.1:{dead_port}", timeout=2) as dead_stripe:
        assert check_health(live_tables, live_stripe)[0] is True
        ok, parts = check_health(dead_tables, live_stripe)
        assert ok is False and parts["table_storage"]["ok"] is False and parts["stripe"]["ok"] is True
        ok, parts = check_health(live_tables, dead_stripe)
        assert ok is False and parts["table_storage"]["ok"] is True and parts["stripe"]["ok"] is False
        json.dumps(parts)  # the body is plain JSON


def test_a_missing_setting_is_a_503_that_names_it(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    monkeypatch.delenv("AzureWebJobsStorage__accountName", raising=False)
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    user_function = health.build().get_user_function()
    resp = user_function(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    body = json.loads(resp.get_body())
    assert resp.status_code == 503 and body["status"] == "degraded"
    assert "app setting" in json.dumps(body)
