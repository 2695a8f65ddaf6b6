"""What the proxy pipeline talks to (`ProxyDeps`) and what it answers (`ProxyResponse`).

Tests build their own `ProxyDeps`; the trigger builds the process-wide one with
`ProxyDeps.build`. The deadlines live here because the lease is derived from them: a
forward (at most `forward_seconds`, enforced by the HTTP client, core/deadline.py) starts
only under a lease taken or renewed just before it, so it always ends before that lease.
A lookup of a maybe-created object may take longer (`lookup_seconds`): it only reads, and the
lease is renewed after it, before any forward.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from azure.data.tables import TableServiceClient

from core.settings import Settings
from proxy.approvals import Approval, ChargeApprovals
from proxy.known_keys import KnownKeys, shared_known_keys
from proxy.leases import LeaseLedger
from proxy.ledger import Ledger, shared_group_ledger
from proxy.noise import NoiseGate
from proxy.store import KeyRecord, LedgerStore, per_ledger_table

LOOKUP_SECONDS = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProxyDeps:
    """Everything the pipeline talks to; tests build their own."""

    store: LedgerStore
    stripe_http: httpx.Client
    settings: Settings
    ledger: Ledger = field(default=None)  # type: ignore[assignment]
    sleep: Callable[[float], None] = time.sleep
    known_keys: KnownKeys | None = None  # None: every request reads the key row
    noise: NoiseGate | None = None  # None: unauthenticated requests are neither limited nor sampled
    approvals: ChargeApprovals | None = None  # None: keys' approval_above_usd is not looked at (unit tests)
    on_approval_requested: Callable[[Approval], None] | None = None  # the alert (alerts/notify.py), after the fact

    def __post_init__(self) -> None:
        if self.ledger is None:  # a ledger of its own that knows the key's lease rows (issued with the key)
            self.ledger = LeaseLedger(self.store, reaper=False)

    @classmethod
    def build(cls, tables: TableServiceClient, stripe_http: httpx.Client, settings: Settings) -> ProxyDeps:
        """The proxy's deps: the process-wide group-commit ledger and known key rows (docs/ledger.md)."""
        store = LedgerStore(tables, settings)
        return cls(store, stripe_http, settings, shared_group_ledger(tables, store),
                   known_keys=shared_known_keys(tables, store), noise=per_ledger_table(tables, store, NoiseGate),
                   approvals=ChargeApprovals(tables, settings))

    def read_key(self, key_id: str) -> KeyRecord | None:
        """The key row as storage has it now (and remembered for later metered POSTs)."""
        key = self.store.read_key(key_id)
        if key is not None and self.known_keys is not None:
            self.known_keys.put(key)
        return key

    @property
    def lease(self) -> timedelta:
        """How long an in_flight record is held: 2 × the forward deadline + 10 s, so a forward
        started under it ends at least `forward_seconds` + 10 s before it does."""
        return timedelta(seconds=2 * self.forward_seconds + 10)

    @property
    def forward_seconds(self) -> float:
        """Total deadline of one call to Stripe (connect + write + read)."""
        return self.settings.stripe_timeout_seconds

    @property
    def lookup_seconds(self) -> float:
        """Total deadline of one lookup of a maybe-created object (a list walk on localstripe
        can page through thousands of objects; on Stripe it stops at the record's creation)."""
        return max(LOOKUP_SECONDS, self.forward_seconds)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.settings.idempotency_retention_days)

    def backoff(self, attempt: int) -> None:
        self.sleep(random.uniform(0, min(0.25, 0.005 * 2 ** min(attempt, 6))))


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict:  # for tests and in-process callers
        return dict(json.loads(self.body))


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)
