"""Shared fixtures: real Azurite, real localstripe and devhost, each started on free ports.

Unit tests need none of them. Integration tests ask for `azurite`, `localstripe` or
`app_stack` (devhost running the real function_app.py against both). An autouse
fixture keeps the developer's own environment out of every test.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devhost.services import REPO_ROOT, Service, start_azurite, start_devhost, start_localstripe

STRIPE_TEST_SECRET = "sk_test_spendgate_suite_4f9a1c"  # the scan in tests looks for this exact value
FUNCTION_KEY = "test-function-key"
ARTIFACTS = REPO_ROOT / "artifacts"

_LEAKY_PREFIXES = ("SPENDGATE_", "STRIPE_", "AzureWebJobs", "DEVHOST_", "WEBSITE_")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition", every: float = 0.2) -> Any:
    """The first truthy value of `predicate`, polled every `every` seconds; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they set themselves."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def azurite(artifacts_dir: Path) -> Iterator[Service]:
    svc = start_azurite(log_path=artifacts_dir / "azurite.log")
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def localstripe(artifacts_dir: Path) -> Iterator[Service]:
    svc = start_localstripe(log_path=artifacts_dir / "localstripe.log")
    yield svc
    svc.stop()


@dataclass
class AppStack:
    """devhost serving function_app.py, with the services and settings it runs on."""

    devhost: Service
    azurite: Service
    localstripe: Service
    settings: dict[str, str]
    function_key: str = FUNCTION_KEY

    @property
    def url(self) -> str:
        return self.devhost.url

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"x-functions-key": self.function_key}


def app_settings(azurite: Service, localstripe: Service, **overrides: str) -> dict[str, str]:
    """App settings for a devhost run against the given services (fresh table prefix)."""
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.extra["connection_string"],
        "STRIPE_API_BASE": localstripe.url,
        "STRIPE_SECRET_KEY": STRIPE_TEST_SECRET,
        "SPENDGATE_TABLE_PREFIX": "sg" + uuid.uuid4().hex[:10],
        "SPENDGATE_TOOL_QUEUE_PREFIX": "spendgate-tool",  # the queue triggers' %SPENDGATE_TOOL_QUEUE_PREFIX%
        "DEVHOST_FUNCTION_KEY": FUNCTION_KEY,
        "PYTHON_THREADPOOL_THREAD_COUNT": "64",  # as main.bicep sets it (why: there)
        "DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY": "32",  # as function.bicep's perInstanceConcurrency
    }
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def app_stack(azurite: Service, localstripe: Service, artifacts_dir: Path) -> Iterator[AppStack]:
    """One devhost running the real app for the whole session."""
    settings = app_settings(azurite, localstripe)
    svc = start_devhost(REPO_ROOT, settings, log_path=artifacts_dir / "devhost-app.log", ready_path="/api/health")
    yield AppStack(svc, azurite, localstripe, settings)
    svc.stop()
