"""The charge and fetch domain functions over the real ProxyClient, faked at the HTTP transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from billing import charging
from billing.charging import TransientChargeError, fetch_customers
from billing.claims import Claim, Identity, Owner, Verdict
from billing.payloads import ChargeItem, ChargeRequest, CustomerQuery, Endpoint, FetchRequest, ItemOutcome, ItemResult
from proxy.client import ProxyClient

BASE = "http://proxy.test/api/stripe"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


class MemoryClaims:
    """Claims that always let the caller charge (or answer `verdict`), recording settlements."""

    def __init__(self, verdict: Verdict = Verdict.PROCEED, object_id: str | None = None) -> None:
        self.verdict, self.object_id = verdict, object_id
        self.claimed: list[tuple[Identity, Owner]] = []
        self.settled: list[tuple[Identity, bool, str | None]] = []

    def claim(self, identity: Identity, owner: Owner, amount_cents: int, now: datetime) -> Claim:
        self.claimed.append((identity, owner))
        holder = owner if self.verdict is Verdict.PROCEED else Owner("other", "other-0", "azure-durable/other")
        return Claim(self.verdict, holder, self.object_id)

    def settle(
        self, identity: Identity, owner: Owner, *, moved_money: bool, object_id: str | None, now: datetime
    ) -> None:
        self.settled.append((identity, moved_money, object_id))


def charge_customer(client: ProxyClient, request: ChargeRequest, claims: MemoryClaims | None = None) -> ItemResult:
    return charging.charge_customer(client, request, claims or MemoryClaims(), NOW)


def client(handler: Callable[[httpx.Request], httpx.Response]) -> ProxyClient:
    return ProxyClient(
        BASE,
        "vk_k1_secret",
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        max_retries=1,
        backoff_seconds=0.001,
    )


def error(status: int, code: str, type_: str = "invalid_request_error") -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "code": code, "message": code}})


def request(endpoint: Endpoint = Endpoint.PAYMENT_INTENTS, card: str | None = "card_1") -> ChargeRequest:
    return ChargeRequest(ChargeItem("cus_1", 2900, card), 7, "run1", "vk_k1_secret", endpoint, "2026-06")


def test_a_payment_intent_uses_the_customers_card_and_the_stable_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"id": "pi_1", "status": "succeeded"})

    result = charge_customer(client(handler), request())
    assert (result.outcome, result.object_id, result.item_index) == (ItemOutcome.CHARGED, "pi_1", 7)
    sent = seen[0]
    assert sent.url.path == "/api/stripe/v1/payment_intents"
    assert sent.headers["Idempotency-Key"] == "run1-7"
    assert sent.headers["Authorization"] == "Bearer vk_k1_secret"
    form = {k: v[0] for k, v in parse_qs(sent.content.decode()).items()}
    assert form["customer"] == "cus_1" and form["payment_method"] == "card_1" and form["confirm"] == "true"
    assert form["amount"] == "2900" and form["currency"] == "usd" and form["metadata[item_index]"] == "7"


def test_a_charge_needs_no_payment_method() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.path.endswith("/v1/charges") and b"payment_method" not in req.content
        return httpx.Response(200, json={"id": "ch_1", "status": "succeeded"})

    assert charge_customer(client(handler), request(Endpoint.CHARGES, card=None)).outcome is ItemOutcome.CHARGED


def test_no_card_is_invalid_without_calling_the_proxy() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be called")

    result = charge_customer(client(handler), request(card=None))
    assert (result.outcome, result.code) == (ItemOutcome.INVALID, "no_payment_method")


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (error(402, "card_declined"), ItemOutcome.DECLINED),  # localstripe's decline shape
        (error(402, "card_declined", "card_error"), ItemOutcome.DECLINED),
        (error(402, "spend_cap_exceeded", "card_error"), ItemOutcome.CAP_EXCEEDED),
        (error(401, "vault_key_revoked"), ItemOutcome.REVOKED),
        (error(401, "vault_key_expired"), ItemOutcome.EXPIRED),
        (error(403, "endpoint_not_allowed"), ItemOutcome.INVALID),
        (error(400, "resource_missing"), ItemOutcome.INVALID),
    ],
)
def test_terminal_answers_are_returned(response: httpx.Response, outcome: ItemOutcome) -> None:
    assert charge_customer(client(lambda req: response), request()).outcome is outcome


@pytest.mark.parametrize(
    "response",
    [error(502, "upstream_unavailable"), error(409, "idempotency_key_in_use"), error(503, "governance_unavailable")],
)
def test_transient_answers_raise_for_a_durable_retry(response: httpx.Response) -> None:
    with pytest.raises(TransientChargeError):
        charge_customer(client(lambda req: response), request())


def test_query_pages_through_all_customers_and_filters_metadata_client_side() -> None:
    people = [
        {"id": f"cus_{i:03d}", "metadata": {"plan": "pro" if i % 3 else "free"}, "default_source": f"card_{i}"}
        for i in range(250)
    ]
    calls: list[dict[str, list[str]]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        q = parse_qs(urlsplit(str(req.url)).query)
        calls.append(q)
        start = 0
        if "starting_after" in q:
            start = next(i for i, p in enumerate(people) if p["id"] == q["starting_after"][0]) + 1
        page = people[start : start + int(q["limit"][0])]
        return httpx.Response(200, content=json.dumps({"data": page, "has_more": start + len(page) < len(people)}))

    result = fetch_customers(client(handler), FetchRequest("vk_r", query=CustomerQuery({"plan": "pro"}, 2900)))
    assert result.pages == 3 and len(calls) == 3
    assert [c["limit"] for c in calls] == [["100"]] * 3
    assert [i.customer_id for i in result.items] == [p["id"] for p in people if p["metadata"]["plan"] == "pro"]
    assert all(i.amount_cents == 2900 and i.payment_method for i in result.items)


def test_given_customers_get_their_default_card() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        cid = req.url.path.rsplit("/", 1)[1]
        if cid == "cus_gone":
            return error(404, "resource_missing")
        return httpx.Response(200, json={"id": cid, "default_source": f"card_of_{cid}"})

    items = (ChargeItem("cus_a", 100), ChargeItem("cus_gone", 100), ChargeItem("cus_b", 100, "pm_given"))
    result = fetch_customers(client(handler), FetchRequest("vk_r", items=items))
    assert [i.payment_method for i in result.items] == ["card_of_cus_a", None, "pm_given"]


def test_a_revoked_read_key_stops_the_fetch() -> None:
    result = fetch_customers(
        client(lambda req: error(401, "vault_key_revoked")),
        FetchRequest("vk_r", query=CustomerQuery({"plan": "pro"}, 1)),
    )
    assert (result.items, result.failure_code) == ((), "revoked")


def test_an_explicit_card_is_kept_when_the_customer_is_listed_again_without_one() -> None:
    looked_up: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        looked_up.append(req.url.path)
        return httpx.Response(200, json={"id": "cus_a", "invoice_settings": {"default_payment_method": "pm_default"}})

    items = (ChargeItem("cus_a", 100, "pm_chosen", "p1"), ChargeItem("cus_a", 200, None, "p2"))
    result = fetch_customers(client(handler), FetchRequest("vk_r", items=items))
    assert [(i.payment_method, i.card_source, i.purpose) for i in result.items] == [
        ("pm_chosen", "explicit", "p1"), ("pm_default", "default_payment_method", "p2")]
    assert looked_up == ["/api/stripe/v1/customers/cus_a"]


def test_a_decline_records_the_payment_intent_stripe_names_and_releases_the_claim() -> None:
    body = {"error": {"type": "card_error", "code": "card_declined", "charge": "ch_1",
                      "payment_intent": {"id": "pi_declined", "status": "requires_payment_method"}}}
    claims = MemoryClaims()
    result = charge_customer(client(lambda req: httpx.Response(402, json=body)), request(), claims)
    assert (result.outcome, result.object_id) == (ItemOutcome.DECLINED, "pi_declined")
    assert claims.settled == [(Identity("cus_1", "2026-06"), False, "pi_declined")]
    # localstripe names only the failed charge.
    body["error"].pop("payment_intent")
    assert charge_customer(client(lambda req: httpx.Response(402, json=body)), request()).object_id == "ch_1"


def test_a_charged_item_settles_its_claim_and_an_identity_charged_elsewhere_is_not_sent() -> None:
    claims = MemoryClaims()
    ok = charge_customer(client(lambda req: httpx.Response(200, json={"id": "pi_1", "status": "succeeded"})),
                         request(), claims)
    assert ok.outcome is ItemOutcome.CHARGED and claims.settled == [(Identity("cus_1", "2026-06"), True, "pi_1")]
    assert claims.claimed[0][1] == Owner("vk_k1_secret", "run1-7", "azure-durable/run1")

    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("an identity charged elsewhere must not be sent")

    done = charge_customer(client(handler), request(), MemoryClaims(Verdict.ALREADY_CHARGED, "pi_other"))
    assert (done.outcome, done.object_id, done.code) == (ItemOutcome.ALREADY_CHARGED, "pi_other", "already_charged")
    with pytest.raises(TransientChargeError):  # someone else is charging it now: retry later
        charge_customer(client(handler), request(), MemoryClaims(Verdict.IN_PROGRESS))
