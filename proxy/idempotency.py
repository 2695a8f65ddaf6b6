"""Idempotency records: how a repeated request finds the first one's outcome.

Every POST through the proxy has an idempotency key: the caller's ``Idempotency-Key``,
or (unless the key's policy turns it off) one derived from the vault key id, method,
path and the canonical body hash, or else a random one (so even then an ambiguous
outcome can be reconciled). Its record lives in the key's partition for
`SPENDGATE_IDEMPOTENCY_RETENTION_DAYS` (30 by default, longer than Stripe's 24 h):

    (none) --reserve+create--> in_flight --2xx / definite 4xx--> completed (replayed)
                                   |  \\--429 from Stripe, connect error--> (deleted)
                                   \\--timeout, connection lost, 5xx, 409--> ambiguous
    ambiguous or in_flight past its lease --retry takes over--> in_flight (lookup, then forward)

A completed payment intent that is not finished (``requires_action``, …) is ``held``: its
reservation stays pending until the intent resolves (proxy/holds.py). Reconcile believes a
lookup that finds nothing only when `lookup_conclusive` says so.

A request that fails validation never creates a record (it is audited only).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace
from datetime import datetime, timedelta

from core.errors import SpendgateError
from proxy.store import IdemRecord, idem_row_key
from proxy.stripe_request import StripeRequest

MAX_KEY_LENGTH = 255
# Stripe keeps an idempotency key at least 24 hours (docs.stripe.com/api/idempotent_requests).
STRIPE_KEY_WINDOW = timedelta(hours=24)
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,255}$")


def caller_key(raw: str | None) -> str | None:
    """The caller's Idempotency-Key, validated (printable ASCII, ≤ 255 chars like Stripe)."""
    if raw is None or raw == "":
        return None
    if not _PRINTABLE.match(raw):
        raise SpendgateError("body_invalid", "Idempotency-Key must be 1-255 printable ASCII characters.", param="Idempotency-Key")
    return raw


def derived_key(key_id: str, request: StripeRequest) -> str:
    """The automatic key: identical requests on one vault key share it."""
    return "auto_" + hashlib.sha256(f"{key_id}\n{request.fingerprint()}".encode()).hexdigest()[:40]


def random_key() -> str:
    return "rand_" + secrets.token_hex(20)


def forwarded_key(key_id: str, idempotency_key: str) -> str:
    """What Stripe sees: scoped to the vault key, so two keys reusing a value never collide."""
    return f"sg_{key_id}_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


def marker(key_id: str, idempotency_key: str) -> str:
    """The metadata value that lets the proxy find an object it may have created."""
    return hashlib.sha256(f"marker\n{key_id}\n{idempotency_key}".encode()).hexdigest()[:32]


def new_record(
    key_id: str, idempotency_key: str, request: StripeRequest, amount: int, day: str, now: datetime,
    lease: timedelta, retention: timedelta,
) -> IdemRecord:
    return IdemRecord(
        key_id=key_id, idempotency_key=idempotency_key, state="in_flight", fingerprint=request.fingerprint(),
        method=request.method, path=request.path, kind=request.kind, amount_cents=amount, reserve_day=day,
        created_at=now, lease_until=now + lease, expires_at=now + retention,
        forwarded_key=forwarded_key(key_id, idempotency_key),
        # The marker is the proxy's alone (a caller-set one is refused) and scoped by the key id,
        # so one key's lookup can never find, settle or replay another key's object.
        marker=marker(key_id, idempotency_key) if request.marked else None,
    )


def taken_over(record: IdemRecord, now: datetime, lease: timedelta) -> IdemRecord:
    """The record as claimed by a retry that will resolve it."""
    return replace(record, state="in_flight", lease_until=now + lease, attempts=record.attempts + 1)


def is_live(record: IdemRecord, now: datetime) -> bool:
    """Still inside its retention period (older records are as good as absent)."""
    return now < record.expires_at


def in_use(record: IdemRecord, now: datetime) -> bool:
    """Another request holds this record right now."""
    return record.state == "in_flight" and now < record.lease_until


def lookup_conclusive(record: IdemRecord, now: datetime) -> bool:
    """May "not found" be believed? Only once the record's last lease has ended (this process
    can no longer be forwarding it: the forward's deadline is under the lease) and Stripe's
    24 h window for the forwarded idempotency key has passed since then."""
    return now >= record.lease_until + STRIPE_KEY_WINDOW


def idem_row(idempotency_key: str) -> str:
    """The RowKey of the record for an idempotency key (layout: proxy.store)."""
    return idem_row_key(idempotency_key)
