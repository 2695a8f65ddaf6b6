"""ProxyClient: encoding, outcome mapping and retry-with-the-same-key (httpx MockTransport).

Its behaviour against the real proxy is covered in test_proxy_http.py.
"""

from __future__ import annotations

import httpx

from proxy.client import Outcome, ProxyClient, encode_params


def test_encode_params_nests_like_stripe() -> None:
    assert encode_params({"amount": 5, "confirm": True, "metadata": {"plan": "pro"}, "expand": ["a"], "x": None}) == [
        ("amount", "5"), ("confirm", "true"), ("metadata[plan]", "pro"), ("expand[0]", "a")]


def _client(answers: list[httpx.Response], seen: list[httpx.Request]) -> ProxyClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    return ProxyClient("http://proxy/api/stripe", "vk_x", http=httpx.Client(transport=httpx.MockTransport(handler)),
                       backoff_seconds=0)


def err(status: int, code: str, type_: str = "invalid_request_error") -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "code": code, "message": code}})


def test_transient_answers_are_retried_with_the_same_key() -> None:
    seen: list[httpx.Request] = []
    c = _client([err(503, "governance_unavailable"), err(409, "idempotency_key_in_use"),
                 httpx.Response(200, json={"id": "pi_1"}, headers={"Idempotent-Replayed": "true"})], seen)
    r = c.post("/v1/payment_intents", {"amount": 1}, idempotency_key="k1")
    assert r.outcome is Outcome.SUCCEEDED and r.object_id == "pi_1" and r.replayed and r.idempotency_key == "k1"
    assert [q.headers["Idempotency-Key"] for q in seen] == ["k1", "k1", "k1"]
    assert seen[0].url.path == "/api/stripe/v1/payment_intents" and seen[0].content == b"amount=1"


def test_outcome_mapping_and_no_retry_for_terminal_answers() -> None:
    cases = [
        (err(402, "spend_cap_exceeded", "card_error"), Outcome.CAP_EXCEEDED),
        (err(402, "card_declined", "card_error"), Outcome.DECLINED),
        (err(401, "vault_key_revoked"), Outcome.REVOKED),
        (err(401, "vault_key_expired"), Outcome.EXPIRED),
        (err(401, "vault_key_invalid"), Outcome.INVALID),
        (err(403, "endpoint_not_allowed"), Outcome.FORBIDDEN),
        (err(400, "amount_invalid"), Outcome.INVALID),
    ]
    for answer, outcome in cases:
        seen: list[httpx.Request] = []
        r = _client([answer], seen).post("/v1/charges", {"amount": 1})
        assert r.outcome is outcome and len(seen) == 1 and not r.retryable


def test_gives_up_as_transient() -> None:
    seen: list[httpx.Request] = []
    r = _client([err(502, "upstream_unavailable")] * 3, seen).get("/v1/charges", {"limit": 3})
    assert r.outcome is Outcome.TRANSIENT and r.retryable and len(seen) == 3
    assert seen[0].url.query == b"limit=3"


def test_stripe_should_retry_decides_what_is_transient() -> None:
    """Issue 15 point 7: the header wins over the status, as in stripe-python (BRIEF.md)."""
    retry = {"Stripe-Should-Retry": "true"}
    cases = [
        # A 429 from Stripe and a 409 the server calls retryable: retried with the same key, then TRANSIENT.
        (httpx.Response(429, json={"error": {"type": "rate_limit_error", "code": "rate_limit"}}, headers=retry), 3),
        (httpx.Response(409, json={"error": {"code": "charge_in_progress"}}, headers=retry), 3),
    ]
    for answer, attempts in cases:
        seen: list[httpx.Request] = []
        r = _client([answer] * attempts, seen).post("/v1/payment_intents", {"amount": 1}, idempotency_key="k")
        assert r.outcome is Outcome.TRANSIENT and r.retryable and len(seen) == attempts
        assert {q.headers["Idempotency-Key"] for q in seen} == {"k"}
    # `false` makes even a 5xx final (never retried), e.g. a stored answer the proxy replays.
    seen = []
    final = httpx.Response(500, json={"error": {"code": "api_error"}}, headers={"Stripe-Should-Retry": "false"})
    r = _client([final], seen).post("/v1/payment_intents", {"amount": 1}, idempotency_key="k")
    assert r.outcome is Outcome.INVALID and not r.retryable and len(seen) == 1
    # The proxy's own rate limit says false: not retried.
    seen = []
    limited = httpx.Response(429, json={"error": {"code": "rate_limited"}}, headers={"Stripe-Should-Retry": "false"})
    assert _client([limited], seen).get("/v1/charges").outcome is Outcome.INVALID and len(seen) == 1
