"""Reading a request bound for Stripe: safe path, canonical parameters, amount.

Stripe takes ``application/x-www-form-urlencoded`` bodies with nested keys
(``metadata[plan]=pro``). The proxy parses the body into an ordered list of
(key, value) pairs, which is what it meters, fingerprints and forwards. A JSON body is
accepted as a convenience and converted to the same pairs. Anything the proxy cannot
read unambiguously is refused before it reaches the ledger or Stripe: header values
that are not printable ASCII, a ``Stripe-Version`` other than the pinned one, bodies nested
deeper than `MAX_DEPTH`, the proxy's own marker parameter, and ``expand[]`` into objects
the key may not read.
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
from proxy.endpoints import METERED, Rule, classify, expand_chain
from proxy.policy import METHODS

# Stripe's own metadata limits (50 keys of 40 chars, values of 500 chars) at 4 UTF-8 bytes a
# character come to ~110 KB of form body; a maximal-metadata charge must fit.
MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 8  # nesting of JSON bodies and of form keys (a[b][c]…); Stripe's own params need ≤ 5
MAX_AMOUNT_CENTS = 99_999_999  # Stripe's own limit for USD: $999,999.99
MARKER_PARAM = "metadata[spendgate_idem]"
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")
_KEY = re.compile(r"^[A-Za-z0-9_]+(\[[^\[\]\x00-\x1f]*\])*$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
# Headers the proxy reads; each must be printable ASCII (no other header is forwarded).
CHECKED_HEADERS = ("authorization", "idempotency-key", "stripe-version", "content-type")
PRICED_LATER = ("intent", "capture", "refund")  # amount read from Stripe before the reservation

Params = list[tuple[str, str]]


@dataclass(frozen=True)
class StripeRequest:
    """A validated request: method, safe /v1 path, canonical params, metering facts."""

    method: str
    path: str
    params: Params
    kind: str | None  # the metered row's pricing (body, intent, capture, refund), "release", or None
    amount_cents: int | None
    currency: str | None

    @property
    def metered_amount(self) -> int:
        """Cents this request reserves against the cap (0 for requests that move no money)."""
        return self.amount_cents or 0 if self.kind in ("body", *PRICED_LATER) else 0

    @property
    def marked(self) -> bool:
        """Does this request create an object the proxy marks (and can find again by marker)?"""
        return self.kind in ("body", "refund")

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
        if _json_depth(text) > MAX_DEPTH:
            raise SpendgateError("body_invalid", f"The JSON body is nested deeper than {MAX_DEPTH} levels.")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
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


def _json_depth(text: str) -> int:
    """How deeply brackets nest in a JSON text (outside strings), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_headers(headers: dict[str, str]) -> None:
    """Every header the proxy reads is printable ASCII (refused before anything is reserved)."""
    for name in CHECKED_HEADERS:
        value = headers.get(name)
        if value is not None and not _PRINTABLE.match(value):
            raise SpendgateError("header_invalid", f"The {name} header must be printable ASCII.", param=name)


def check_stripe_version(value: str | None, pinned: str) -> None:
    """A request may name only the pinned Stripe-Version (or none: the pinned one is sent)."""
    if value is not None and value.strip() != "" and value.strip() != pinned:
        raise SpendgateError(
            "stripe_version_not_supported",
            f"This proxy forwards Stripe-Version {pinned} only; send that version or no Stripe-Version header.",
            param="Stripe-Version",
        )


def check_expand(rule: Rule, params: Params, readable: set[str]) -> None:
    """`expand[]` may only name expandable fields, and only into objects the key may read."""
    for key, value in params:
        if key != "expand" and not key.startswith("expand["):
            continue
        chain = expand_chain(rule, value)
        if not chain:
            raise SpendgateError("expand_not_allowed", f"expand {value[:80]!r} is not an expandable field here.",
                                 param=key)
        hidden = [t for t in chain if t not in readable]
        if hidden:
            raise SpendgateError(
                "expand_not_allowed",
                f"expand {value[:80]!r} would return a {hidden[0]} object, which this key may not read.", param=key)


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
        if key.count("[") > MAX_DEPTH:
            raise SpendgateError("body_invalid", f"Parameter {key[:60]!r} is nested too deeply.", param=key[:60])
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


def build_request(method: str, path: str, params: Params, rule: Rule | None = None) -> StripeRequest:
    """Classify and meter a request whose path and params are already safe.

    Amounts of confirm, capture and (amount-less) refunds are not in the request: they are
    read from Stripe later (`proxy.pricing`), just before the reservation."""
    rule = rule or classify(method, path)
    kind = None
    if rule is not None:
        kind = rule.pricing if rule.access == METERED else ("release" if rule.access == "release" else None)
    as_dict = dict(params)
    if any(k.startswith("amount[") or k.startswith("currency[") for k in as_dict):
        raise SpendgateError("amount_invalid", "amount and currency must be plain values.", param="amount")
    if method == "POST":
        _check_owned_params(as_dict)
    amount = currency = None
    if kind == "body":
        amount = _amount(as_dict, required=True)
        currency = as_dict.get("currency", "").lower()
        if currency != "usd":
            raise SpendgateError(
                "currency_not_allowed", "Spend caps are in USD; only currency=usd can be charged through this key.", param="currency"
            )
        if path == "/v1/payment_intents" and as_dict.get("confirm", "").lower() != "true":
            # An unconfirmed intent's client_secret lets anyone confirm it outside the proxy.
            raise SpendgateError("parameter_not_allowed",
                                 "Create payment intents with confirm=true (confirming later outside the proxy is unmetered).",
                                 param="confirm")
    elif kind == "refund":
        amount = _amount(as_dict, required=False)
    elif kind == "capture" and "amount_to_capture" in as_dict:
        amount = _amount({"amount": as_dict["amount_to_capture"]}, required=True)
    return StripeRequest(method, path, params, kind, amount, currency)


def _check_owned_params(params: dict[str, str]) -> None:
    """The marker belongs to the proxy: a caller may neither set it nor clear all metadata."""
    if MARKER_PARAM in params:
        raise SpendgateError("parameter_not_allowed", f"{MARKER_PARAM} is set by the proxy; do not send it.",
                             param=MARKER_PARAM)
    if "metadata" in params:
        raise SpendgateError("parameter_not_allowed", "Send metadata as metadata[key]=value pairs.", param="metadata")


def forward_body(params: Params, marker: str | None) -> bytes:
    """The form body sent to Stripe: the caller's params plus, for metered creates, the marker."""
    pairs = [(k, v) for k, v in params if k != MARKER_PARAM]  # never the caller's (refused anyway)
    if marker:
        pairs.append((MARKER_PARAM, marker))
    return urlencode(pairs).encode()
