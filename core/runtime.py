"""The process-wide clients the triggers hand to domain functions.

Triggers stay thin: they call `runtime()` for ready-made dependencies and pass them to
plain functions as arguments, so domain code never reads the environment or builds
clients itself, and tests build their own. Clients are created on first use (never at
import time) and reused, because connection pools are what make the hot path cheap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import httpx
from azure.data.tables import TableServiceClient

from core.deadline import deadline_transport
from core.settings import Settings, get_settings
from core.storage import table_service


@dataclass
class Runtime:
    """Lazily built clients for one set of settings."""

    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def tables(self) -> TableServiceClient:
        return table_service(self.settings)

    @cached_property
    def stripe_http(self) -> httpx.Client:
        """HTTP client for the Stripe upstream: explicit timeouts, pooled connections, and a
        transport that enforces the proxy's total deadline per forward (core/deadline.py)."""
        timeout = self.settings.stripe_timeout_seconds
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=64)
        return httpx.Client(
            base_url=self.settings.stripe_api_base,
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            limits=limits,
            transport=deadline_transport(limits),
        )


_current: Runtime | None = None
_current_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's Runtime, rebuilt if the settings changed (tests change them)."""
    global _current
    settings = get_settings()
    with _current_lock:
        if _current is None or _current.settings != settings:
            _current = Runtime(settings)
        return _current
