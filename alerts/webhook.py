"""Delivering an alert to `SPENDGATE_ALERT_WEBHOOK_URL`: signed, retried with backoff, off the charge path.

The signature follows Stripe's own webhook scheme (docs.stripe.com/webhooks, "Verify signatures
manually"), so receivers can reuse what they know::

    Spendgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body with the shared
secret (`SPENDGATE_ALERT_WEBHOOK_SECRET`), compares in constant time, and rejects old
timestamps (replays). `verify` is that check, used by the tests and usable by receivers.

Delivery runs in the `deliver_alert` queue trigger (`alerts/routes.py`), never in the request
that raised the alert: a few quick attempts here (`BACKOFF_SECONDS`), then the trigger raises and
the Functions host redelivers the message (host.json `maxDequeueCount`, after its visibility
timeout) until it lands in `<prefix>-alerts-webhook-poison`. A delivery can repeat (a retry after a
timeout the receiver did answer, the sweeper re-sending an alert whose publish was cut short): the
alert's `id` is stable per fact, and receivers deduplicate on it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import httpx

HEADER = "Spendgate-Signature"
BACKOFF_SECONDS = (0.5, 1.0, 2.0)  # pauses between the attempts of one delivery
TOLERANCE_SECONDS = 300


class DeliveryFailed(Exception):
    """Every attempt failed; the queue trigger raises it so the host redelivers the message."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """Is `header` a valid signature of `body` under `secret`, made within `tolerance` seconds?"""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def deliver(
    http: httpx.Client, url: str, secret: str, body: bytes, *, sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> int:
    """POST the alert, signed afresh on each attempt; the attempt count on success, `DeliveryFailed` after the last."""
    last = ""
    for attempt in range(len(BACKOFF_SECONDS) + 1):
        if attempt:
            sleep(BACKOFF_SECONDS[attempt - 1])
        headers = {"Content-Type": "application/json", HEADER: sign(secret, body, int(clock()))}
        try:
            resp = http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
            continue
        if 200 <= resp.status_code < 300:
            return attempt + 1
        last = f"HTTP {resp.status_code}"
    raise DeliveryFailed(f"alert webhook failed after {len(BACKOFF_SECONDS) + 1} attempts: {last}")
