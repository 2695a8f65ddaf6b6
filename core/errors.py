"""spendgate's error catalog: every error code the app answers with, in one place.

Every error leaves the app Stripe-shaped, so stripe-python, stripe-node and other Stripe
clients raise the matching exception::

    {"error": {"type": <type>, "code": <code>, "message": <text>, "param"?: <field>}}

with a `Stripe-Should-Retry` header telling clients whether a retry is safe.

    code                        status  type                    Stripe-Should-Retry
    --------------------------  ------  ----------------------  -------------------
    vault_key_invalid           401     invalid_request_error   false
    vault_key_revoked           401     invalid_request_error   false
    vault_key_expired           401     invalid_request_error   false
    endpoint_not_allowed        403     invalid_request_error   false
    expand_not_allowed          403     invalid_request_error   false
    spend_cap_exceeded          402     card_error              false
    approval_required           402     card_error              false
    approval_rejected           402     card_error              false
    approval_expired            402     card_error              false
    approval_not_pending        409     invalid_request_error   false
    amount_invalid              400     invalid_request_error   false
    currency_not_allowed        400     invalid_request_error   false
    body_invalid                400     invalid_request_error   false
    body_too_large              413     invalid_request_error   false
    path_invalid                400     invalid_request_error   false
    api_v2_not_supported        400     invalid_request_error   false
    header_invalid              400     invalid_request_error   false
    parameter_not_allowed       400     invalid_request_error   false
    stripe_version_not_supported 400    invalid_request_error   false
    method_not_allowed          405     invalid_request_error   false
    policy_invalid              400     invalid_request_error   false
    not_found                   404     invalid_request_error   false
    run_exists                  409     invalid_request_error   false
    duplicate_customers         400     invalid_request_error   false
    already_charged             409     invalid_request_error   false
    charge_in_progress          409     invalid_request_error   true
    idempotency_key_in_use      409     invalid_request_error   true
    idempotency_error           400     idempotency_error       false
    rate_limited                429     rate_limit_error        false
    upstream_unavailable        502     api_error               true
    governance_unavailable      503     api_error               true

Why 402 for a spent cap: stripe-python maps 402 to `CardError` and never retries it,
while 429 and 409 are retried by many HTTP clients (see docs/errors.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    """One entry of the catalog: how a code is answered."""

    code: str
    status: int
    type: str
    retryable: bool
    summary: str


_INVALID = "invalid_request_error"

CATALOG: dict[str, ErrorKind] = {
    k.code: k
    for k in (
        ErrorKind("vault_key_invalid", 401, _INVALID, False, "The vault key is malformed, unknown or wrong."),
        ErrorKind("vault_key_revoked", 401, _INVALID, False, "The vault key was revoked."),
        ErrorKind("vault_key_expired", 401, _INVALID, False, "The vault key has expired."),
        ErrorKind("endpoint_not_allowed", 403, _INVALID, False, "The key's allowlist does not include this method and path."),
        ErrorKind("expand_not_allowed", 403, _INVALID, False,
                  "`expand[]` names a field the proxy cannot expand, or an object this key may not read."),
        ErrorKind("spend_cap_exceeded", 402, "card_error", False, "The charge would take the key over its spend cap."),
        ErrorKind("approval_required", 402, "card_error", False,
                  "The charge is above the key's approval_above_usd: it waits for a person (`approval` names the "
                  "approval). Nothing was forwarded; send the same request again only once it is approved."),
        ErrorKind("approval_rejected", 402, "card_error", False,
                  "A person rejected this charge (or this billing run); nothing was forwarded."),
        ErrorKind("approval_expired", 402, "card_error", False,
                  "Nobody approved this charge in time; nothing was forwarded. Ask again with a new Idempotency-Key."),
        ErrorKind("approval_not_pending", 409, _INVALID, False,
                  "The run or charge is not waiting for approval (decided already, timed out or stopped); "
                  "the body carries its state."),
        ErrorKind("amount_invalid", 400, _INVALID, False, "The amount is missing, not a positive integer, or too large."),
        ErrorKind("currency_not_allowed", 400, _INVALID, False, "Caps are in USD; the request names another currency."),
        ErrorKind("body_invalid", 400, _INVALID, False, "The body is not valid form or JSON encoding."),
        ErrorKind("body_too_large", 413, _INVALID, False, "The body exceeds 256 KB."),
        ErrorKind("path_invalid", 400, _INVALID, False, "Only plain /v1/... paths are forwarded."),
        ErrorKind("api_v2_not_supported", 400, _INVALID, False,
                  "Stripe's v2 API (/v2/...) is not governed by the proxy yet; nothing was forwarded."),
        ErrorKind("header_invalid", 400, _INVALID, False, "A header value is not printable ASCII."),
        ErrorKind("parameter_not_allowed", 400, _INVALID, False,
                  "A parameter the proxy owns or cannot meter (e.g. `metadata[spendgate_idem]`, confirm=false)."),
        ErrorKind("stripe_version_not_supported", 400, _INVALID, False,
                  "The Stripe-Version header names a version other than the one the proxy is pinned to."),
        ErrorKind("method_not_allowed", 405, _INVALID, False, "The HTTP method is not supported here."),
        ErrorKind("policy_invalid", 400, _INVALID, False, "The key policy or request body is invalid (see `param`)."),
        ErrorKind("not_found", 404, _INVALID, False, "No such key, run or resource."),
        ErrorKind("run_exists", 409, _INVALID, False, "A billing run with this instance id already exists."),
        ErrorKind("duplicate_customers", 400, _INVALID, False,
                  "A run lists one customer twice for one charge identity (see `param` and the message)."),
        ErrorKind("already_charged", 409, _INVALID, False,
                  "This customer was already charged for this billing period and purpose; nothing was billed."),
        ErrorKind("charge_in_progress", 409, _INVALID, True,
                  "Another run or agent is charging this customer for this period right now; retry shortly."),
        ErrorKind("idempotency_key_in_use", 409, _INVALID, True, "A request with this Idempotency-Key is still in flight."),
        ErrorKind("idempotency_error", 400, "idempotency_error", False, "This Idempotency-Key was used with different parameters."),
        ErrorKind("rate_limited", 429, "rate_limit_error", False,
                  "Too many requests without a valid vault key from this source; slow down."),
        ErrorKind("upstream_unavailable", 502, "api_error", True, "Stripe could not be reached or answered ambiguously."),
        ErrorKind("governance_unavailable", 503, "api_error", True, "The spend ledger is unreachable; nothing was forwarded."),
    )
}


class SpendgateError(Exception):
    """An error with a catalog code; raise it from domain code, shape it at the edge."""

    def __init__(self, code: str, message: str | None = None, *, param: str | None = None) -> None:
        if code not in CATALOG:
            raise KeyError(f"unknown error code {code!r}: add it to core.errors.CATALOG")
        self.kind = CATALOG[code]
        self.code = code
        self.message = message or self.kind.summary
        self.param = param
        super().__init__(f"{code}: {self.message}")

    @property
    def status(self) -> int:
        return self.kind.status

    def body(self) -> dict[str, dict[str, str]]:
        """The Stripe-shaped error body."""
        err: dict[str, str] = {"type": self.kind.type, "code": self.code, "message": self.message}
        if self.param:
            err["param"] = self.param
        return {"error": err}

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Stripe-Should-Retry": "true" if self.kind.retryable else "false",
        }

    def to_json(self) -> str:
        return json.dumps(self.body())


def render_markdown() -> str:
    """docs/errors.md, generated from CATALOG (a test keeps the file in step)."""
    lines = [
        "# Error codes",
        "",
        "<!-- Generated from core/errors.py by `python -m core.errors > docs/errors.md`; do not edit by hand. -->",
        "",
        "Every error spendgate answers with is Stripe-shaped, so Stripe clients raise the matching",
        "exception (stripe-python: 400/404 → `InvalidRequestError` or `IdempotencyError`, 401 →",
        "`AuthenticationError`, 402 → `CardError`, 403 → `PermissionError`, others → `APIError`;",
        "stripe-node: the same names with a `Stripe` prefix, e.g. `StripeCardError`):",
        "",
        "```json",
        '{"error": {"type": "card_error", "code": "spend_cap_exceeded", "message": "…", "param": "amount"}}',
        "```",
        "",
        "Each answer carries `Stripe-Should-Retry: true|false`, which stripe-python and stripe-node obey. Only the",
        "codes marked retryable are safe to retry, and only with the same `Idempotency-Key`.",
        "",
        "| code | HTTP | type | retry | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in CATALOG.values():
        lines.append(f"| `{kind.code}` | {kind.status} | `{kind.type}` | {'yes' if kind.retryable else 'no'} | {kind.summary} |")
    lines += [
        "",
        "## Why 402 for a spent cap",
        "",
        "A spent cap is final until the window turns or an admin raises the cap. stripe-python maps",
        "402 to `CardError` and never retries it, while 429 and 409 are retried by stripe-python and",
        "many HTTP clients. So `spend_cap_exceeded` is 402 with `Stripe-Should-Retry: false`.",
        "",
        "## Answers that come from Stripe",
        "",
        "Errors Stripe itself returns (a card decline, `resource_missing`, …) pass through unchanged,",
        "with `Stripe-Should-Retry: false` for definite 4xx answers and `true` for 409, 429 and 5xx.",
        "An ambiguous upstream failure (timeout, connection lost) is answered `upstream_unavailable`",
        "(502, retryable): a retry with the same `Idempotency-Key` resolves it without a second charge.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
