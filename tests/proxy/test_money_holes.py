"""Issue 13: each hole an adversarial probe found, as a test on real Azurite + localstripe.

The case numbers are the rows of the issue's table. Each test failed on the code before the
fix (the assertion that fails is named in its docstring) and asserts on real state: objects
in localstripe, counters and records in Azurite. Cases 8-12 are also rows of
test_bad_input_http.py (over real HTTP); case 1 is in test_policy.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from core.deadline import deadline_transport
from core.settings import Settings
from devhost.seed import count_objects
from proxy import idempotency as idem
from proxy.answers import utf16_units
from proxy.forward import ProxyDeps, ProxyResponse, handle_proxy_request
from proxy.noise import PER_SOURCE_BURST, NoiseGate
from proxy.store import UNAUTHENTICATED, KeyRecord
from tests.conftest import STRIPE_TEST_SECRET
from tests.proxy.conftest import Domain, key_request, new_tag, pi_params, tagged_objects
from tests.proxy.fault_upstream import FaultUpstream

pytestmark = pytest.mark.integration
FORM = "application/x-www-form-urlencoded"


def post(deps: ProxyDeps, vault_key: str, path: str, params: dict[str, str] | str, *, key: str | None = None,
         headers: dict[str, str] | None = None) -> ProxyResponse:
    hdrs = {"Authorization": f"Bearer {vault_key}", "Content-Type": FORM, **(headers or {})}
    if key:
        hdrs["Idempotency-Key"] = key
    body = params if isinstance(params, str) else urlencode(params)
    return handle_proxy_request(deps, "POST", path.lstrip("/"), hdrs, body.encode())


def view(domain: Domain, key_id: str) -> tuple[int, int]:
    v = domain.vault.describe(key_id)
    return v["spent_cents"], v["pending_cents"]


def stripe_get(domain: Domain, path: str, **params: Any) -> dict[str, Any]:
    resp = domain.stripe_http.get(path, params=params, headers={"Authorization": f"Bearer {STRIPE_TEST_SECRET}"})
    return dict(resp.json())


@pytest.fixture(scope="module")
def fault(domain: Domain) -> Iterator[FaultUpstream]:
    f = FaultUpstream(domain.localstripe.url, sleep_seconds=3)
    yield f
    f.stop()


@pytest.fixture
def faulty(domain: Domain, fault: FaultUpstream) -> Iterator[ProxyDeps]:
    """Pipeline deps whose Stripe is the fault injector, through the app's deadline transport (5 s)."""
    settings = Settings.from_mapping({**domain.settings.env, "SPENDGATE_STRIPE_TIMEOUT_SECONDS": "5"})
    limits = httpx.Limits(max_connections=16)
    http = httpx.Client(base_url=fault.url, timeout=5, limits=limits, transport=deadline_transport(limits))
    yield replace(domain.deps, stripe_http=http, settings=settings, ledger=None)  # type: ignore[arg-type]
    fault.clear()
    http.close()


def test_case_2_a_legacy_wildcard_key_cannot_subscribe(domain: Domain) -> None:
    """A key row stored before the table (entries the denylist let through) reaches nothing the
    table refuses. Before: 200 and an active subscription, spent 0."""
    k = domain.vault.issue(key_request(daily_usd_cap=1))
    row = domain.deps.store.read_key(k["key_id"])
    assert row is not None
    legacy = ("POST /v1/customers/*/subscriptions", "POST /v1/*/*/*", "POST /v1/customers/*/*", "POST /v1/*")
    entity_key = replace(row, allowed_endpoints=legacy)
    _rewrite_key(domain, entity_key)
    before = count_objects(domain.localstripe.url, STRIPE_TEST_SECRET, "subscriptions")
    customer = domain.stripe_http.post("/v1/customers", data={"email": "sub@example.com"},
                                       headers={"Authorization": f"Bearer {STRIPE_TEST_SECRET}"}).json()
    for path, params in [(f"/v1/customers/{customer['id']}/subscriptions", {"items[0][price]": "price_1000"}),
                         ("/v1/subscriptions", {"customer": customer["id"], "items[0][price]": "price_1000"})]:
        r = post(domain.deps, k["vault_key"], path, params)
        assert (r.status, r.json()["error"]["code"]) == (403, "endpoint_not_allowed"), path
    assert count_objects(domain.localstripe.url, STRIPE_TEST_SECRET, "subscriptions") == before
    assert view(domain, k["key_id"]) == (0, 0)


def _rewrite_key(domain: Domain, key: KeyRecord) -> None:
    from proxy.store import key_to_entity

    domain.deps.store.table.upsert_entity(key_to_entity(key))
    if domain.deps.known_keys is not None:
        domain.deps.known_keys.put(domain.deps.store.read_key(key.key_id))  # type: ignore[arg-type]


def test_cases_3_and_4_the_marker_is_the_proxys_and_an_unfound_charge_stays_pending(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    """Before: the caller's empty marker was forwarded, the record kept the derived one, reconcile
    released a charge Stripe had made, and a second $10 charge passed on a $10 cap."""
    k = domain.vault.issue(key_request(daily_usd_cap=10))
    tag = new_tag()
    for _ in range(2):  # case 4: the same request retried with the same Idempotency-Key
        r = post(faulty, k["vault_key"], "/v1/payment_intents",
                 {**pi_params(1000, tag), "metadata[spendgate_idem]": ""}, key="hole-3")
        assert (r.status, r.json()["error"]["code"]) == (400, "parameter_not_allowed")
    assert tagged_objects(domain.localstripe.url, tag) == [] and view(domain, k["key_id"]) == (0, 0)
    # Stripe creates the charge but answers 500: reconcile finds it by the proxy's own marker.
    fault.arm("500_after_forward")
    assert post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1000, tag), key="hole-3").status == 500
    assert domain.vault.reconcile(k["key_id"])["resolved"][0]["outcome"] == "settled"
    assert view(domain, k["key_id"]) == (1000, 0)
    second = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1000, tag, **{"metadata[n]": "2"}))
    assert (second.status, second.json()["error"]["code"]) == (402, "spend_cap_exceeded")
    retry = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1000, tag), key="hole-3")
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1


def test_case_5_a_maximal_metadata_charge_completes_its_record(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    """Stripe's maximum metadata (50 keys of 40 chars, values of 500 astral characters), answered
    with raw UTF-8. Before: 413 for the body; with a smaller body, a final write over 64 KiB of
    UTF-16 left the record in_flight and the amount pending."""
    k = domain.vault.issue(key_request(daily_usd_cap=100))
    tag = new_tag()
    metadata = {f"{i:02d}" + "k" * 38: "\U0001F600" * 500 for i in range(49)}
    body = {"amount": 2500, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa",
            "metadata": {**metadata, "test_tag": tag}}
    fault.arm("raw_utf8")
    headers = {"Authorization": f"Bearer {k['vault_key']}", "Content-Type": "application/json", "Idempotency-Key": "max"}
    r = handle_proxy_request(faulty, "POST", "v1/payment_intents", headers, json.dumps(body, ensure_ascii=False).encode())
    assert r.status == 200 and 2 * utf16_units(r.body.decode()) > 64 * 1024  # over one property; all of it
    record = domain.deps.store.read_idem(k["key_id"], idem.idem_row("max"))
    assert record is not None and record.state == "completed" and record.object_id == r.json()["id"]
    assert view(domain, k["key_id"]) == (2500, 0)
    replay = handle_proxy_request(faulty, "POST", "v1/payment_intents", headers,
                                  json.dumps(body, ensure_ascii=False).encode())
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json()["id"] == r.json()["id"]
    assert replay.json()["metadata"] == r.json()["metadata"]
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1


def test_case_6_stripes_409_keeps_the_reservation(domain: Domain, fault: FaultUpstream, faulty: ProxyDeps) -> None:
    """Before: a 409 idempotency_key_in_use released the amount and deleted the record while the
    original request could still succeed."""
    k = domain.vault.issue(key_request(daily_usd_cap=30))
    tag = new_tag()
    fault.arm("409_in_use")
    busy = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(2500, tag), key="in-use")
    assert busy.status == 409 and busy.headers["Stripe-Should-Retry"] == "true"
    assert view(domain, k["key_id"]) == (0, 2500)
    record = domain.deps.store.read_idem(k["key_id"], idem.idem_row("in-use"))
    assert record is not None and record.state == "ambiguous"
    # Meanwhile the cap counts it: another charge that would not fit beside it is refused.
    other = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1000, tag, **{"metadata[n]": "2"}))
    assert other.status == 402
    retry = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(2500, tag), key="in-use")
    assert retry.status == 200 and len(tagged_objects(domain.localstripe.url, tag)) == 1
    assert view(domain, k["key_id"]) == (2500, 0)


def test_case_6_the_forward_has_a_total_deadline_under_the_lease(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    """An answer that trickles in (every read within its own timeout) is cut off at the total
    deadline, so the lease (which outlasts lookup + forward) never expires mid-forward.
    Before: nothing bounded the total; the trickled answer was waited out."""
    assert faulty.lease >= timedelta(seconds=2 * faulty.forward_seconds + 10)
    k = domain.vault.issue(key_request(daily_usd_cap=30))
    tag = new_tag()
    fault.arm("trickle_after_forward")
    first = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1200, tag), key="slow")
    assert (first.status, first.json()["error"]["code"]) == (502, "upstream_unavailable")
    assert view(domain, k["key_id"]) == (0, 1200)  # kept: Stripe did make it
    retry = post(faulty, k["vault_key"], "/v1/payment_intents", pi_params(1200, tag), key="slow")
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1 and view(domain, k["key_id"]) == (1200, 0)


def test_case_7_one_key_can_never_claim_anothers_object(domain: Domain, fault: FaultUpstream, faulty: ProxyDeps) -> None:
    """Before: key B sent A's marker value, failed before Stripe, retried, and was answered with
    A's payment intent and metered for it."""
    a, b = domain.vault.issue(key_request()), domain.vault.issue(key_request())
    tag = new_tag()
    pi_a = post(faulty, a["vault_key"], "/v1/payment_intents", pi_params(700, tag), key="order-7").json()
    marker_a = idem.marker(a["key_id"], "order-7")
    assert pi_a["metadata"]["spendgate_idem"] == marker_a
    stolen = post(faulty, b["vault_key"], "/v1/payment_intents",
                  {**pi_params(700, tag), "metadata[spendgate_idem]": marker_a}, key="order-7")
    assert (stolen.status, stolen.json()["error"]["code"]) == (400, "parameter_not_allowed")
    fault.arm("refuse")  # B's own request fails before Stripe, then B retries
    assert post(faulty, b["vault_key"], "/v1/payment_intents", pi_params(700, tag), key="order-7").status == 500
    retry = post(faulty, b["vault_key"], "/v1/payment_intents", pi_params(700, tag), key="order-7")
    assert retry.status == 200 and retry.json()["id"] != pi_a["id"]
    assert retry.json()["metadata"]["spendgate_idem"] == idem.marker(b["key_id"], "order-7") != marker_a
    assert view(domain, a["key_id"]) == (700, 0) and view(domain, b["key_id"]) == (700, 0)
    assert len(tagged_objects(domain.localstripe.url, tag)) == 2


def test_case_8_a_bad_header_reserves_nothing(domain: Domain) -> None:
    """Before: raised after the reservation (503), the amount stayed pending, a retry got 409."""
    k = domain.vault.issue(key_request())
    tag = new_tag()
    for attempt in range(3):
        r = post(domain.deps, k["vault_key"], "/v1/payment_intents", pi_params(900, tag), key=f"v-{attempt}",
                 headers={"Stripe-Version": "2026-10-28.endive\xe9"})
        assert (r.status, r.json()["error"]["code"]) == (400, "header_invalid")
    assert view(domain, k["key_id"]) == (0, 0) and tagged_objects(domain.localstripe.url, tag) == []
    assert post(domain.deps, k["vault_key"], "/v1/payment_intents", pi_params(900, tag), key="v-0").status == 200


def test_case_12_the_pinned_stripe_version_is_what_stripe_sees(domain: Domain) -> None:
    """No Stripe-Version → the pinned one is sent; the pinned one → sent; any other → 400, nothing
    reserved. Before: 2014-01-31 was forwarded as sent."""
    seen: list[str | None] = []

    def stripe(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Stripe-Version"))
        return httpx.Response(200, json={"id": "pi_x", "object": "payment_intent", "amount": 100, "currency": "usd"})

    deps = replace(domain.deps, stripe_http=httpx.Client(base_url="http://stripe.test",
                                                         transport=httpx.MockTransport(stripe)), ledger=None)  # type: ignore[arg-type]
    k = domain.vault.issue(key_request())
    pinned = domain.settings.stripe_version
    assert pinned == "2026-10-28.endive"
    assert post(deps, k["vault_key"], "/v1/payment_intents", pi_params(100, "a")).status == 200
    assert post(deps, k["vault_key"], "/v1/payment_intents", pi_params(101, "b"),
                headers={"Stripe-Version": pinned}).status == 200
    old = post(deps, k["vault_key"], "/v1/payment_intents", pi_params(102, "c"), headers={"Stripe-Version": "2014-01-31"})
    assert (old.status, old.json()["error"]["code"]) == (400, "stripe_version_not_supported")
    assert old.headers["Stripe-Should-Retry"] == "false" and pinned in old.json()["error"]["message"]
    assert seen == [pinned, pinned] and view(domain, k["key_id"]) == (201, 0)


def test_case_13_unauthenticated_noise_is_rate_limited_and_sampled(domain: Domain) -> None:
    """Before: every request without a key wrote an audit row, without limit."""
    deps = replace(domain.deps, noise=NoiseGate(clock=lambda: 1000.0))  # a frozen clock: no refill
    table = domain.deps.store.table

    def rows() -> int:
        return len(list(table.query_entities("PartitionKey eq @pk", parameters={"pk": UNAUTHENTICATED})))

    before = rows()
    statuses = []
    for _ in range(int(PER_SOURCE_BURST) + 20):
        r = handle_proxy_request(deps, "POST", "v1/payment_intents", {"Authorization": "Bearer nope",
                                 "X-Forwarded-For": "203.0.113.9"}, b"amount=100&currency=usd&confirm=true")
        statuses.append((r.status, r.json()["error"]["code"]))
    assert statuses[: int(PER_SOURCE_BURST)] == [(401, "vault_key_invalid")] * int(PER_SOURCE_BURST)
    assert set(statuses[int(PER_SOURCE_BURST):]) == {(429, "rate_limited")}
    assert rows() - before == 1  # one sampled row for the source this minute
    other = handle_proxy_request(deps, "GET", "v1/payment_intents", {"X-Forwarded-For": "198.51.100.7"}, b"")
    assert other.status == 401 and rows() - before == 2  # another source is limited on its own


def test_confirm_and_capture_of_existing_intents_are_priced_from_the_intent(domain: Domain) -> None:
    """What to build: confirm and capture are metered at the intent's amount, read just before
    the reservation; over the cap nothing reaches Stripe."""
    k = domain.vault.issue(key_request(daily_usd_cap=50, allowed_endpoints=[
        "POST /v1/payment_intents/*/confirm", "POST /v1/payment_intents/*/capture", "GET /v1/payment_intents/*"]))
    auth = {"Authorization": f"Bearer {STRIPE_TEST_SECRET}"}
    made = [domain.stripe_http.post("/v1/payment_intents", headers=auth, data={
        "amount": str(a), "currency": "usd", "payment_method": "pm_card_visa", **extra}).json()
        for a, extra in [(3000, {}), (2500, {}), (1500, {"confirm": "true", "capture_method": "manual"})]]
    ok = post(domain.deps, k["vault_key"], f"/v1/payment_intents/{made[0]['id']}/confirm", "")
    assert ok.status == 200 and ok.json()["status"] == "succeeded"
    assert view(domain, k["key_id"]) == (3000, 0)
    over = post(domain.deps, k["vault_key"], f"/v1/payment_intents/{made[1]['id']}/confirm", "")
    assert (over.status, over.json()["error"]["code"]) == (402, "spend_cap_exceeded")
    assert stripe_get(domain, f"/v1/payment_intents/{made[1]['id']}")["status"] == "requires_confirmation"
    captured = post(domain.deps, k["vault_key"], f"/v1/payment_intents/{made[2]['id']}/capture", "")
    assert captured.status == 200 and captured.json()["status"] == "succeeded"
    assert view(domain, k["key_id"]) == (4500, 0)
    missing = post(domain.deps, k["vault_key"], "/v1/payment_intents/pi_doesnotexist/confirm", "")
    assert missing.status == 404 and view(domain, k["key_id"]) == (4500, 0)


def test_an_ambiguous_confirm_is_found_by_the_intents_status(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    k = domain.vault.issue(key_request(allowed_endpoints=["POST /v1/payment_intents/*/confirm"]))
    pi = domain.stripe_http.post("/v1/payment_intents", headers={"Authorization": f"Bearer {STRIPE_TEST_SECRET}"},
                                 data={"amount": "1800", "currency": "usd", "payment_method": "pm_card_visa"}).json()
    path = f"/v1/payment_intents/{pi['id']}/confirm"
    fault.arm("500_after_forward", path=path)
    assert post(faulty, k["vault_key"], path, "", key="conf").status == 500
    assert view(domain, k["key_id"]) == (0, 1800)
    retry = post(faulty, k["vault_key"], path, "", key="conf", headers={})
    assert retry.status == 200 and retry.json()["status"] == "succeeded"
    assert retry.headers["Idempotent-Replayed"] == "true" and view(domain, k["key_id"]) == (1800, 0)


def test_a_lookup_longer_than_the_forward_deadline_renews_the_lease_before_forwarding(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    """The lookup only reads and may take longer than T; the forward after it starts under a
    renewed lease, so it still ends before the lease does."""
    deps = replace(faulty, settings=Settings.from_mapping({**faulty.settings.env, "SPENDGATE_STRIPE_TIMEOUT_SECONDS": "2"}))
    k = domain.vault.issue(key_request())
    tag = new_tag()
    fault.arm("refuse")  # ambiguous, and Stripe made nothing
    assert post(deps, k["vault_key"], "/v1/payment_intents", pi_params(600, tag), key="slow-lookup").status == 500
    before = domain.deps.store.read_idem(k["key_id"], idem.idem_row("slow-lookup"))
    fault.arm("sleep_after_forward", method="GET", path="/v1/payment_intents")  # the list takes 3 s > T
    retry = post(deps, k["vault_key"], "/v1/payment_intents", pi_params(600, tag), key="slow-lookup")
    assert retry.status == 200 and len(tagged_objects(domain.localstripe.url, tag)) == 1
    after = domain.deps.store.read_idem(k["key_id"], idem.idem_row("slow-lookup"))
    assert before is not None and after is not None and after.state == "completed" and after.attempts == 2
    assert view(domain, k["key_id"]) == (600, 0)
