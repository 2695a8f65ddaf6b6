"""Shared bench helpers: a key row and the reservation exactly as the proxy makes it."""

from __future__ import annotations

import statistics
import uuid
from datetime import UTC, datetime, timedelta

from proxy.lease_rows import insert_key_with_leases
from proxy.store import IdemRecord, KeyRecord, LedgerStore, Operation, op_create_idem


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_key(store: LedgerStore, daily_cap_cents: int, *, label: str = "bench", leases: bool = False) -> KeyRecord:
    """Insert a fresh active key row with the given daily cap (no total cap); with `leases`, together
    with its lease rows, as the vault issues keys (proxy/lease_rows.py), else bare (as keys issued
    before leases existed, and as `GroupLedger` expects them)."""
    now = utcnow()
    key = KeyRecord(
        key_id="kbench" + uuid.uuid4().hex[:16], vendor="stripe", label=label, secret_hash="-",
        daily_cap_cents=daily_cap_cents, total_cap_cents=None, allowed_endpoints=("POST /v1/payment_intents",),
        expires_at=now + timedelta(hours=2), created_at=now,
    )
    if leases:
        return insert_key_with_leases(store, key, now.date().isoformat())
    return store.insert_key(key)


def idem_record(key_id: str, idempotency_key: str, amount: int, day: str) -> IdemRecord:
    """The in_flight record the proxy creates in the same transaction as a reservation."""
    now = utcnow()
    return IdemRecord(
        key_id=key_id, idempotency_key=idempotency_key, state="in_flight", fingerprint="f" * 64,
        method="POST", path="/v1/payment_intents", kind="payment_intent", amount_cents=amount, reserve_day=day,
        created_at=now, lease_until=now + timedelta(seconds=70), expires_at=now + timedelta(days=30),
        forwarded_key="sg_" + uuid.uuid4().hex, marker="sg_" + uuid.uuid4().hex[:20],
    )


def reserve_ops(key_id: str, idempotency_key: str, amount: int, day: str) -> list[Operation]:
    return [op_create_idem(idem_record(key_id, idempotency_key, amount, day))]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
