"""Reading a request bound for Stripe: safe path, canonical parameters, amount.

Stripe takes ``application/x-www-form-urlencoded`` bodies with nested keys
(``metadata[plan]=pro``). The proxy parses the body into an ordered list of
(key, value) pairs, which is what it meters, fingerprints and forwards. A JSON body is
accepted as a convenience and converted to the same pairs. Anything the proxy cannot
read unambiguously is refused before it reaches the ledger or Stripe.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from core.errors import SpendgateError
from proxy.policy import METERED, METHODS

MAX_BODY_BYTES = 64 * 1024
MAX_AMOUNT_CENTS = 99_999_999  # Stripe's own limit for USD: $999,999.99
MARKER_PARAM = "metadata[spendgate_idem]"
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")
_KEY = re.compile(r"^[A-Za-z0-9_]+(\[[^\[\]\x00-\x1f]*\])*$")

Params = list[tuple[str, str]]


@dataclass(frozen=True)
class StripeRequest:
    """A validated request: method, safe /v1 path, canonical params, metering facts."""

    method: str
    path: str
    params: Params
    kind: str | None  # "charge", "refund" or None (not metered)
    amount_cents: int | None
    currency: str | None

    @property
    def metered_amount(self) -> int:
        """Cents this request reserves against the cap (0 for everything but charges)."""
        return self.amount_cents or 0 if self.kind == "charge" else 0

    def fingerprint(self) -> str:
        """A hash of what the request does, to tell a true retry from a reused key."""
        canon = json.dumps([self.method, self.path, sorted(self.params)], separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def safe_path(route_path: str | None, raw_url_path: str | None = None) -> str:
    """``v1/payment_intents/pi_1`` → ``/v1/payment_intents/pi_1``; anything odd is path_invalid.

    Both the decoded route parameter and (when given) the raw URL path are checked, so
    encoded slashes, dots and backslashes are caught whichever layer decoded them.
    """
    problem = SpendgateError("path_invalid", "Only plain /v1/... paths (letters, digits, _ and -) are forwarded.", param="path")
    if raw_url_path is not None:
        tail = raw_url_path.split("?", 1)[0]
        if "%" in tail or "\\" in tail or "/../" in tail + "/" or "/./" in tail + "/" or "//" in tail.split("://")[-1]:
            raise problem
    path = (route_path or "").strip("/") if route_path is not None else ""
    if unquote(path) != path or len(path) > 300:
        raise problem
    segments = path.split("/")
    if len(segments) < 2 or segments[0] != "v1" or not all(_SEGMENT.match(s) for s in segments):
        raise problem
    return "/" + path


def check_method(method: str) -> str:
    method = method.upper()
    if method not in METHODS:
        raise SpendgateError("method_not_allowed", f"{method} is not supported; use {', '.join(METHODS)}.")
    return method


def _flatten(value: Any, prefix: str, out: Params) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise SpendgateError("body_invalid", "JSON object keys must be non-empty strings.")
            _flatten(v, f"{prefix}[{k}]" if prefix else k, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    elif value is None:
        out.append((prefix, ""))
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    elif isinstance(value, int | str):
        out.append((prefix, str(value)))
    elif isinstance(value, float):
        # Keep floats visibly non-integer so the amount check can refuse 29.5.
        out.append((prefix, repr(value)))
    else:
        raise SpendgateError("body_invalid", "Unsupported JSON value.")


def parse_params(body: bytes, content_type: str | None) -> Params:
    """The body as ordered (key, value) pairs; JSON bodies are converted to form pairs."""
    if len(body) > MAX_BODY_BYTES:
        raise SpendgateError("body_too_large", f"The body exceeds {MAX_BODY_BYTES // 1024} KB.")
    if not body.strip():
        return []
    ctype = (content_type or "application/x-www-form-urlencoded").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpendgateError("body_invalid", "The body is not UTF-8.") from None
    out: Params = []
    if ctype == "application/json":
        try:
            doc = json.loads(text)
        except ValueError:
            raise SpendgateError("body_invalid", "The body is not valid JSON.") from None
        if not isinstance(doc, dict):
            raise SpendgateError("body_invalid", "A JSON body must be an object.")
        _flatten(doc, "", out)
    elif ctype == "application/x-www-form-urlencoded":
        try:
            out = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise SpendgateError("body_invalid", "The body is not valid form encoding.") from None
    else:
        raise SpendgateError("body_invalid", "Send application/x-www-form-urlencoded (or JSON).")
    return _checked(out)


def parse_query(query: str) -> Params:
    """Query-string parameters (GET/DELETE), validated like a form body."""
    if not query:
        return []
    if len(query) > MAX_BODY_BYTES:
        raise SpendgateError("body_too_large", "The query string is too long.")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise SpendgateError("body_invalid", "The query string is not valid form encoding.") from None
    return _checked(pairs)


def _checked(pairs: Params) -> Params:
    seen: set[str] = set()
    for key, value in pairs:
        if not _KEY.match(key) or any(ord(c) < 32 for c in value):
            raise SpendgateError("body_invalid", f"Parameter name {key[:60]!r} is not a Stripe parameter.", param=key[:60])
        if key in seen and not key.endswith("[]"):
            # Two values for one key: the proxy and Stripe might read different ones.
            raise SpendgateError("body_invalid", f"Parameter {key!r} is given more than once.", param=key)
        seen.add(key)
    return pairs


def _amount(params: dict[str, str], required: bool) -> int | None:
    raw = params.get("amount")
    if raw is None:
        if required:
            raise SpendgateError("amount_invalid", "amount (integer cents) is required.", param="amount")
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw) or Decimal(raw) <= 0 or int(raw) > MAX_AMOUNT_CENTS:
        raise SpendgateError(
            "amount_invalid", f"amount must be a positive integer number of cents, at most {MAX_AMOUNT_CENTS}.", param="amount"
        )
    return int(raw)


def build_request(method: str, path: str, params: Params) -> StripeRequest:
    """Classify and meter a request whose path and params are already safe."""
    kind = METERED.get((method, path))
    as_dict = dict(params)
    if any(k.startswith("amount[") or k.startswith("currency[") for k in as_dict):
        raise SpendgateError("amount_invalid", "amount and currency must be plain values.", param="amount")
    amount = currency = None
    if kind == "charge":
        amount = _amount(as_dict, required=True)
        currency = as_dict.get("currency", "").lower()
        if currency != "usd":
            raise SpendgateError(
                "currency_not_allowed", "Spend caps are in USD; only currency=usd can be charged through this key.", param="currency"
            )
    elif kind == "refund":
        amount = _amount(as_dict, required=False)
    return StripeRequest(method, path, params, kind, amount, currency)


def forward_body(params: Params, marker: str | None) -> bytes:
    """The form body sent to Stripe: the caller's params plus, for metered creates, the marker."""
    pairs = list(params)
    if marker and not any(k == MARKER_PARAM for k, _ in pairs):
        pairs.append((MARKER_PARAM, marker))
    return urlencode(pairs).encode()
