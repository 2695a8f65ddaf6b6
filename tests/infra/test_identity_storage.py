"""With main.bicep's settings (no connection string), the app reaches its tables as its identity.

Azure's App Service managed-identity endpoint is stood in for by a loopback HTTP server
(`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, as the platform sets them), so the real
azure-identity code asks it for a storage token and we see which identity it asked for.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.identity import DefaultAzureCredential

from core.settings import Settings
from core.storage import table_service

CLIENT_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
IDENTITY_HEADER = "local-identity-header"


class _IdentityEndpoint(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        self.requests.append({**query, "header": self.headers.get("X-IDENTITY-HEADER", "")})
        body = {
            "access_token": "fake-storage-token",
            "expires_on": str(int(time.time()) + 3600),
            "resource": query.get("resource", ""),
            "token_type": "Bearer",
            "client_id": query.get("client_id", ""),
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def identity_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IdentityEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _IdentityEndpoint.requests = []
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_USERNAME",
        "MSI_ENDPOINT",
        "MSI_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{server.server_port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    yield _IdentityEndpoint.requests
    server.shutdown()
    server.server_close()


def test_without_a_connection_string_tables_use_the_account_url_and_the_apps_identity(
    identity_endpoint: list[dict[str, str]],
) -> None:
    # Exactly what main.bicep sets for storage (AzureWebJobsStorage itself is absent).
    settings = Settings.from_mapping(
        {
            "AzureWebJobsStorage__accountName": "stspendgatetest",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": CLIENT_ID,
        }
    )
    client = table_service(settings)
    assert client.url.startswith("https://stspendgatetest.table.core.windows.net")
    assert isinstance(client.credential, DefaultAzureCredential)

    token = client.credential.get_token("https://storage.azure.com/.default")

    assert token.token == "fake-storage-token"
    assert len(identity_endpoint) == 1
    (asked,) = identity_endpoint
    assert asked["client_id"] == CLIENT_ID, "the user-assigned identity from AzureWebJobsStorage__clientId"
    assert asked["resource"] == "https://storage.azure.com"
    assert asked["header"] == IDENTITY_HEADER


def test_a_connection_string_wins_and_needs_no_identity(identity_endpoint: list[dict[str, str]]) -> None:
    settings = Settings.from_mapping(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AzureWebJobsStorage__accountName": "ignored"}
    )
    client = table_service(settings)
    assert client.url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    assert not isinstance(client.credential, DefaultAzureCredential)
    assert identity_endpoint == []
