"""Audit rows: one per proxied request, allowed or denied.

A row records what was asked and decided, never a secret: the vault key appears only
as its id, and the Stripe secret never reaches this module. `decision` is
``forwarded``, ``replayed`` or the error code that denied the request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from proxy.store import AuditRow

log = logging.getLogger("spendgate.proxy")


@dataclass
class AuditDraft:
    """What is known about a request so far; filled in as the pipeline proceeds."""

    request_id: str
    started: datetime
    method: str
    path: str
    key_id: str = ""
    label: str = ""
    idempotency_key: str | None = None
    amount: int | None = None
    currency: str | None = None
    source: str = ""  # where the request came from (proxy/noise.py), for unauthenticated requests
    t0: float = field(default_factory=time.monotonic)

    def row(self, decision: str, upstream_status: int | None = None, object_id: str | None = None) -> AuditRow:
        latency = int((time.monotonic() - self.t0) * 1000)
        log.info(
            "proxy request_id=%s key_id=%s %s %s decision=%s upstream=%s latency_ms=%d",
            self.request_id, self.key_id or "-", self.method, self.path[:100], decision, upstream_status, latency,
        )
        return AuditRow(
            time=self.started, key_id=self.key_id, label=self.label, method=self.method, path=self.path[:300],
            idempotency_key=self.idempotency_key, amount=self.amount, currency=self.currency, decision=decision,
            upstream_status=upstream_status, stripe_object_id=object_id, latency_ms=latency, request_id=self.request_id,
        )
