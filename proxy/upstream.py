"""Talking to Stripe: forward one request, classify the answer, find lost objects.

The real Stripe secret is added here and nowhere else, and scrubbed from every body
that comes back, so it can never be stored, replayed or logged. Headers are never
logged. Every call carries the pinned ``Stripe-Version`` (the caller's value was checked
against it before anything was reserved) and, when given, runs under a total deadline
(`core.deadline.within`): a forward can never outlast the in-flight lease of its record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from core.deadline import within
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
    deadline: float | None = None,
) -> Upstream:
    """Forward one request to Stripe with the real secret, within `deadline` seconds in total."""
    headers = {"Authorization": f"Bearer {secret}"}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if stripe_version:
        headers["Stripe-Version"] = stripe_version
    try:
        with within(deadline if deadline is not None else float("inf")):
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


def read_object(http: httpx.Client, secret: str, path: str, stripe_version: str | None = None) -> dict[str, Any] | None:
    """One object read with the real secret; None when Stripe says it does not exist (404).

    Raises `httpx.HTTPError` (including an HTTP status error for other failures)."""
    headers = {"Authorization": f"Bearer {secret}", **({"Stripe-Version": stripe_version} if stripe_version else {})}
    resp = http.get(path, headers=headers, timeout=LOOKUP_TIMEOUT_SECONDS)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    doc = resp.json()
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    return doc


# What a payment intent's status says about a confirm or capture that may have reached Stripe.
_CONFIRMED = ("succeeded", "processing", "requires_capture", "requires_action")
_CAPTURED = ("succeeded", "processing")


def find_action(http: httpx.Client, secret: str, record_path: str, kind: str,
                stripe_version: str | None = None) -> dict[str, Any] | None:
    """The intent, if its status shows that the confirm or capture in `record_path` happened."""
    intent_path = record_path.rsplit("/", 1)[0]
    intent = read_object(http, secret, intent_path, stripe_version)
    if intent is None:
        return None
    done = _CONFIRMED if kind == "intent" else _CAPTURED
    return intent if intent.get("status") in done else None


def find_created(http: httpx.Client, secret: str, record: Any, stripe_version: str | None = None,
                 deadline: float | None = None) -> dict[str, Any] | None:
    """What Stripe made of a request that may have reached it (`record`: an IdemRecord).

    Created objects are found by their marker, a confirm or capture by the intent's status.
    None means "surely not there" (as far as this lookup can see); an unfinished lookup raises."""
    with within(deadline if deadline is not None else float("inf")):
        if record.marker:
            return find_by_marker(http, secret, record.path, record.marker, record.created_at, stripe_version)
        if record.kind in ("intent", "capture"):
            return find_action(http, secret, record.path, record.kind, stripe_version)
    return None


def find_by_marker(
    http: httpx.Client, secret: str, resource_path: str, marker: str, created_after: datetime,
    stripe_version: str | None = None,
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
        headers = {"Authorization": f"Bearer {secret}", **({"Stripe-Version": stripe_version} if stripe_version else {})}
        resp = http.get(resource_path, params=params, headers=headers, timeout=LOOKUP_TIMEOUT_SECONDS)
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
