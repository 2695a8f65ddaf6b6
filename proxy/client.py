"""The one client for talking to the governance proxy (activities, agent tools, demo, benches).

It never raises for an HTTP answer: every outcome becomes a `ProxyResult` whose
`outcome` says what happened. Only transient answers are retried, always with the SAME
idempotency key, so a retry can never charge twice. Transient is what the answer's
``Stripe-Should-Retry`` header says, as stripe-python and stripe-node decide it (the proxy
and Stripe both send it: ``true`` on a 429 from Stripe, a 409 ``charge_in_progress``…,
``false`` on the proxy's own ``rate_limited`` 429); without the header, connection errors,
5xx and 409 ``idempotency_key_in_use``::

    with ProxyClient(settings.proxy_url, vault_key) as proxy:
        result = proxy.post("/v1/payment_intents",
                            {"amount": 2900, "currency": "usd", "confirm": True,
                             "payment_method": "pm_card_visa", "metadata": {"plan": "pro"}},
                            idempotency_key=f"{instance_id}:{customer_id}:2026-11")
        if result.outcome is Outcome.SUCCEEDED: ...
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import httpx


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    CAP_EXCEEDED = "cap_exceeded"
    REVOKED = "revoked"
    EXPIRED = "expired"
    FORBIDDEN = "forbidden"
    INVALID = "invalid"
    TRANSIENT = "transient"


@dataclass(frozen=True)
class ProxyResult:
    """One request's final answer (after any retries)."""

    outcome: Outcome
    status: int
    body: dict
    code: str | None
    message: str | None
    idempotency_key: str | None
    replayed: bool

    @property
    def object_id(self) -> str | None:
        """The Stripe object's id on success."""
        if self.outcome is Outcome.SUCCEEDED and isinstance(self.body.get("id"), str):
            return str(self.body["id"])
        return None

    @property
    def retryable(self) -> bool:
        return self.outcome is Outcome.TRANSIENT


def encode_params(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: ``{"metadata": {"plan": "pro"}}`` → ``metadata[plan]=pro``."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs.extend(encode_params(value, name))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    pairs.extend(encode_params(item, f"{name}[{i}]"))
                else:
                    pairs.append((f"{name}[{i}]", _scalar(item)))
        elif value is not None:
            pairs.append((name, _scalar(value)))
    return pairs


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def classify(
    status: int, body: Mapping[str, Any], should_retry: str | None = None
) -> tuple[Outcome, str | None, str | None]:
    """Map an HTTP answer (and its ``Stripe-Should-Retry`` header, if any) to an outcome, code and message."""
    err = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    code, message = err.get("code"), err.get("message")  # type: ignore[union-attr]
    if 200 <= status < 300:
        return Outcome.SUCCEEDED, None, None
    hint = (should_retry or "").strip().lower()
    if hint == "true":  # the server says a retry with the same key is safe and may succeed
        return Outcome.TRANSIENT, code, message
    if hint != "false" and (status >= 500 or (status == 409 and code == "idempotency_key_in_use")):
        return Outcome.TRANSIENT, code, message
    if status == 402:
        return (Outcome.CAP_EXCEEDED if code == "spend_cap_exceeded" else Outcome.DECLINED), code, message
    if status == 401:
        outcome = {"vault_key_revoked": Outcome.REVOKED, "vault_key_expired": Outcome.EXPIRED}.get(code or "", Outcome.INVALID)
        return outcome, code, message
    if status == 403:
        return Outcome.FORBIDDEN, code, message
    return Outcome.INVALID, code, message


class ProxyClient:
    """A small synchronous client for ``…/api/stripe``."""

    def __init__(
        self, base_url: str, vault_key: str, *, http: httpx.Client | None = None,
        max_retries: int = 2, backoff_seconds: float = 0.2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._vault_key = vault_key
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0),
                                          limits=httpx.Limits(max_connections=64))
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds

    def __repr__(self) -> str:  # never show the vault key
        return f"ProxyClient({self.base_url!r})"

    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
    ) -> ProxyResult:
        """Send one request (retrying transient answers with the same idempotency key)."""
        method = method.upper()
        pairs = encode_params(params or {})
        headers = {"Authorization": f"Bearer {self._vault_key}"}
        url = self.base_url + "/" + path.lstrip("/")
        content = None
        if method == "POST":
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            # Without a key the proxy derives one from the request (per-key policy), so a
            # retry of the same body is still recognised as the same request.
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = urlencode(pairs).encode()
        elif pairs:
            url += "?" + urlencode(pairs)
        result: ProxyResult | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            result = self._once(method, url, headers, content, idempotency_key if method == "POST" else None)
            if result.outcome is not Outcome.TRANSIENT:
                break
        assert result is not None
        return result

    def _once(self, method: str, url: str, headers: dict[str, str], content: bytes | None, key: str | None) -> ProxyResult:
        try:
            resp = self._http.request(method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            return ProxyResult(Outcome.TRANSIENT, 0, {}, "connection_error", type(exc).__name__, key, False)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {"data": body}
        outcome, code, message = classify(resp.status_code, body, resp.headers.get("Stripe-Should-Retry"))
        replayed = resp.headers.get("Idempotent-Replayed", "").lower() == "true"
        return ProxyResult(outcome, resp.status_code, body, code, message, key, replayed)

    def post(self, path: str, params: Mapping[str, Any], *, idempotency_key: str | None = None) -> ProxyResult:
        return self.request("POST", path, params=params, idempotency_key=idempotency_key)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> ProxyResult:
        return self.request("GET", path, params=params)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
