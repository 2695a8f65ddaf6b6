"""Talking to Stripe: forward one request, classify the answer, find lost objects.

The real Stripe secret is added here and nowhere else, and scrubbed from every body
that comes back, so it can never be stored, replayed or logged. Headers are never
logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from proxy.stripe_request import MARKER_PARAM

MARKER_FIELD = MARKER_PARAM[len("metadata["):-1]
LOOKUP_MARGIN = timedelta(minutes=5)
LOOKUP_MAX_PAGES = 200
LOOKUP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Upstream:
    """What came back: a response (status/body), or a transport outcome."""

    outcome: str  # "response" | "not_sent" | "ambiguous"
    status: int | None = None
    body: str = ""
    content_type: str = "application/json"

    @property
    def object_id(self) -> str | None:
        if self.status is None or not 200 <= self.status < 300:
            return None
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None

    @property
    def definite(self) -> bool:
        """Stripe surely did what it says: 2xx, or a 4xx other than 409/429."""
        return self.outcome == "response" and self.status is not None and self.status < 500


def scrub(text: str, secret: str) -> str:
    return text.replace(secret, "sk_***") if secret and secret in text else text


def send(
    http: httpx.Client, secret: str, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
    body: bytes | None = None, idempotency_key: str | None = None, stripe_version: str | None = None,
) -> Upstream:
    """Forward one request to Stripe with the real secret."""
    headers = {"Authorization": f"Bearer {secret}"}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if stripe_version:
        headers["Stripe-Version"] = stripe_version
    try:
        resp = http.request(method, path, params=params or None, content=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        return Upstream("not_sent")  # the request never left this process
    except httpx.HTTPError:
        return Upstream("ambiguous")  # it may have reached Stripe
    ctype = resp.headers.get("content-type", "application/json").split(";")[0]
    text = scrub(resp.text, secret)
    if resp.status_code >= 500:
        return Upstream("ambiguous", resp.status_code, text, ctype)
    return Upstream("response", resp.status_code, text, ctype)


class LookupIncomplete(Exception):
    """The list could not be read to the end: whether the object exists is still unknown."""


def find_by_marker(
    http: httpx.Client, secret: str, resource_path: str, marker: str, created_after: datetime
) -> dict[str, Any] | None:
    """The object the proxy created for `marker`, if Stripe has it; None only when surely absent.

    localstripe rejects `created[gte]` filters and lists oldest first, so the list is read
    page by page and matched by `metadata[spendgate_idem]` and creation time. Stripe lists
    newest first, so the walk stops at the first object older than the cutoff. If neither
    end is reached within `LOOKUP_MAX_PAGES`, `LookupIncomplete` is raised: the caller must
    keep the outcome ambiguous rather than forward again.
    """
    not_before = int((created_after - LOOKUP_MARGIN).timestamp())
    after: str | None = None
    for _ in range(LOOKUP_MAX_PAGES):
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["starting_after"] = after
        resp = http.get(resource_path, params=params, headers={"Authorization": f"Bearer {secret}"},
                        timeout=LOOKUP_TIMEOUT_SECONDS)
        resp.raise_for_status()
        data = resp.json().get("data") or []
        for obj in data:
            meta = obj.get("metadata") or {}
            if meta.get(MARKER_FIELD) == marker and int(obj.get("created", 0)) >= not_before:
                return dict(obj)
        created = [int(o.get("created", 0)) for o in data]
        newest_first = created == sorted(created, reverse=True) and len(set(created)) > 1
        if not resp.json().get("has_more") or not data or (newest_first and created[-1] < not_before):
            return None
        after = data[-1]["id"]
    raise LookupIncomplete(resource_path)
