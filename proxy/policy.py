"""Key policies: what a vault key may do, validated once when the key is issued.

A policy names the endpoints a key may call (``"POST /v1/payment_intents"``,
``"GET /v1/charges/*"``, where ``*`` matches exactly one id segment), its caps in USD
(daily per UTC day, and an optional lifetime cap) and when it expires; optionally the amount
above which a charge waits for a person (`approval_above_usd`) and its spend-alert thresholds
(`alert_thresholds`, percents of the binding cap): docs/approvals.md.

Fail closed: every entry must name, exactly, a row of the endpoint table
(`proxy.endpoints.TABLE`) that the proxy reads or meters. ``POST /v1/*``, ``GET /v1/*`` or
``POST /v1/customers/*/subscriptions`` name no such row and are refused at issue time; and
since a request is classified against the table before the key is consulted, no entry can
ever reach an endpoint the table does not permit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from core.errors import SpendgateError
from proxy.endpoints import REFUSED, Rule, by_name, classify, grantable

METHODS = ("GET", "POST", "DELETE")
MAX_CAP_USD = Decimal(1_000_000)
MAX_LIFETIME = timedelta(days=365)
MAX_ENDPOINTS = 50
MAX_METADATA = 50

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_FIELDS = {
    "vendor", "label", "daily_usd_cap", "total_usd_cap", "allowed_endpoints",
    "expires_in", "expires_at", "metadata", "auto_idempotency", "approval_above_usd",
    "alert_thresholds",
}


@dataclass(frozen=True)
class Endpoint:
    """One allowlist entry: a method and a path pattern split into segments."""

    method: str
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``"POST /v1/payment_intents"``; raises ValueError with the reason."""
        method, _, path = text.strip().partition(" ")
        method, path = method.upper(), path.strip()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        if not path.startswith("/v1/"):
            raise ValueError("path must start with /v1/")
        segments = tuple(path[1:].split("/"))
        if any(s != "*" and not _SEGMENT.match(s) for s in segments):
            raise ValueError("path segments may hold letters, digits, _ and - only, or be *")
        return cls(method, segments)

    def __str__(self) -> str:
        return f"{self.method} /{'/'.join(self.segments)}"

    def matches(self, method: str, path: str) -> bool:
        """Does a concrete request (method, /v1/... path) fall under this entry?"""
        parts = path.lstrip("/").split("/")
        return method == self.method and len(parts) == len(self.segments) and all(
            s == "*" or s == p for s, p in zip(self.segments, parts, strict=True)
        )


def allowed_rule(allowed_endpoints: tuple[str, ...] | list[str], method: str, path: str) -> Rule | None:
    """The table row of a request, if the table permits it and the key names it; else None.

    The request is classified against the endpoint table first, so a key entry can only
    ever grant the table row it names (a stored entry the table does not know grants nothing)."""
    rule = classify(method, path)
    if rule is None or rule.access == REFUSED or str(rule) not in set(allowed_endpoints):
        return None
    return rule


@dataclass(frozen=True)
class KeyPolicy:
    """What a vault key may do. Caps are integer USD cents."""

    vendor: str
    label: str
    daily_cap_cents: int
    total_cap_cents: int | None
    allowed_endpoints: tuple[Endpoint, ...]
    expires_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    auto_idempotency: bool = True
    approval_above_cents: int | None = None  # charges above this wait for a person (proxy/approvals.py)
    alert_thresholds: tuple[int, ...] | None = None  # percents of the binding cap (proxy/alert_bands.py)

    def allows(self, method: str, path: str) -> bool:
        return allowed_rule(self.endpoint_strings(), method, path) is not None

    def endpoint_strings(self) -> list[str]:
        return [str(e) for e in self.allowed_endpoints]


def _invalid(param: str, message: str) -> SpendgateError:
    return SpendgateError("policy_invalid", message, param=param)


def usd_to_cents(value: Any, param: str) -> int:
    """Dollars (int, float or numeric string with at most 2 decimals) → cents."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _invalid(param, f"{param} must be a number of US dollars")
    try:
        dollars = Decimal(str(value))
    except InvalidOperation:
        raise _invalid(param, f"{param} must be a number of US dollars") from None
    if not dollars.is_finite() or dollars <= 0 or dollars > MAX_CAP_USD:
        raise _invalid(param, f"{param} must be more than 0 and at most {MAX_CAP_USD} US dollars")
    cents = dollars * 100
    if cents != cents.to_integral_value():
        raise _invalid(param, f"{param} may have at most 2 decimal places")
    return int(cents)


def parse_duration(text: Any) -> timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"7d"`` → timedelta; ValueError otherwise."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError("expected a duration like 90s, 15m, 2h or 7d")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def parse_instant(text: Any) -> datetime:
    """An ISO 8601 instant with a timezone (``Z`` allowed) → aware UTC datetime."""
    if not isinstance(text, str):
        raise ValueError("expected an ISO 8601 timestamp")
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise ValueError("the timestamp needs a timezone, e.g. 2030-01-01T00:00:00Z")
    return value.astimezone(UTC)


def _expiry(request: Mapping[str, Any], now: datetime) -> datetime:
    has_in, has_at = request.get("expires_in") is not None, request.get("expires_at") is not None
    if has_in == has_at:
        raise _invalid("expires_in", "give exactly one of expires_in (e.g. \"2h\") or expires_at (ISO 8601)")
    try:
        expires = now + parse_duration(request["expires_in"]) if has_in else parse_instant(request["expires_at"])
    except ValueError as exc:
        raise _invalid("expires_in" if has_in else "expires_at", str(exc)) from None
    if expires <= now:
        raise _invalid("expires_in" if has_in else "expires_at", "the key would already be expired")
    if expires > now + MAX_LIFETIME:
        raise _invalid("expires_in" if has_in else "expires_at", "keys live at most 365 days")
    return expires


def _endpoints(value: Any) -> tuple[Endpoint, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_ENDPOINTS:
        raise _invalid("allowed_endpoints", f"allowed_endpoints must be a list of 1-{MAX_ENDPOINTS} \"METHOD /v1/...\" strings")
    parsed: list[Endpoint] = []
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise _invalid(f"allowed_endpoints[{i}]", "each entry must be a string like \"POST /v1/payment_intents\"")
        try:
            entry = Endpoint.parse(text)
        except ValueError as exc:
            raise _invalid(f"allowed_endpoints[{i}]", f"{text!r}: {exc}") from None
        rule = by_name(str(entry))
        if rule is None or rule.access == REFUSED:
            why = f" ({rule.why})" if rule is not None and rule.why else ""
            raise _invalid(
                f"allowed_endpoints[{i}]",
                f"{text!r} is not an endpoint the proxy meters or reads{why}; refused (fail closed). "
                "A key may name only endpoints from the proxy's endpoint table (docs/proxy.md), "
                "with * only where the table has an id: " + ", ".join(grantable()),
            )
        if entry not in parsed:
            parsed.append(entry)
    return tuple(parsed)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise _invalid("metadata", f"metadata must be an object with at most {MAX_METADATA} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not 0 < len(k) <= 40 or isinstance(v, dict | list) or v is None:
            raise _invalid("metadata", "metadata keys are strings of 1-40 chars; values are strings or numbers")
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
        if len(out[k]) > 500:
            raise _invalid(f"metadata[{k}]", "metadata values are at most 500 chars")
    if len(json.dumps(out)) > 16_000:
        raise _invalid("metadata", "metadata is too large")
    return out


def parse_policy(request: Mapping[str, Any], now: datetime) -> KeyPolicy:
    """Validate an issue request (the JSON body of POST /api/vault/keys) into a policy."""
    if not isinstance(request, Mapping):
        raise _invalid("body", "the request body must be a JSON object")
    unknown = sorted(set(request) - _FIELDS)
    if unknown:
        raise _invalid(unknown[0], f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_FIELDS))}")
    if request.get("vendor") != "stripe":
        raise _invalid("vendor", "vendor must be \"stripe\"")
    label = request.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= 200 or not label.isprintable():
        raise _invalid("label", "label must be a printable string of 1-200 chars")
    if "daily_usd_cap" not in request:
        raise _invalid("daily_usd_cap", "daily_usd_cap is required")
    daily = usd_to_cents(request["daily_usd_cap"], "daily_usd_cap")
    total = None if request.get("total_usd_cap") is None else usd_to_cents(request["total_usd_cap"], "total_usd_cap")
    auto = request.get("auto_idempotency", True)
    if not isinstance(auto, bool):
        raise _invalid("auto_idempotency", "auto_idempotency must be true or false")
    return KeyPolicy(
        vendor="stripe",
        label=label,
        daily_cap_cents=daily,
        total_cap_cents=total,
        allowed_endpoints=_endpoints(request.get("allowed_endpoints")),
        expires_at=_expiry(request, now),
        metadata=_metadata(request.get("metadata")),
        auto_idempotency=auto,
        approval_above_cents=None if request.get("approval_above_usd") is None
        else usd_to_cents(request["approval_above_usd"], "approval_above_usd"),
        alert_thresholds=_thresholds(request.get("alert_thresholds")),
    )


def _thresholds(value: Any) -> tuple[int, ...] | None:
    """Spend alert thresholds in percent of the binding cap (1-100, at most 10); None: the default 50/80/100."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 10 or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 100 for p in value
    ):
        raise _invalid("alert_thresholds", "alert_thresholds must be a list of at most 10 whole percents from 1 to 100")
    return tuple(sorted(set(value)))
