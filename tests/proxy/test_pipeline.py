"""The proxy pipeline as a plain function, on real Azurite + localstripe, with an injected clock.

These cover what needs a clock or a fault at a precise point; everything else is
exercised over real HTTP in test_proxy_http.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
from azure.data.tables import TableServiceClient

from proxy.forward import ProxyDeps, ProxyResponse, handle_proxy_request
from proxy.store import Counters, LedgerStore
from proxy.vault import VaultService
from tests.proxy.conftest import Domain, key_request, new_tag, pi_params, tagged_objects
from tests.proxy.fault_upstream import FaultUpstream

pytestmark = pytest.mark.integration


def now() -> datetime:
    return datetime.now(UTC)


def charge(deps: ProxyDeps, vault_key: str, params: dict[str, str], *, key: str | None = None,
           at: datetime | None = None) -> ProxyResponse:
    headers = {"Authorization": f"Bearer {vault_key}", "Content-Type": "application/x-www-form-urlencoded"}
    if key:
        headers["Idempotency-Key"] = key
    return handle_proxy_request(deps, "POST", "v1/payment_intents", headers, urlencode(params).encode(), at)


@pytest.fixture(scope="module")
def fault(domain: Domain) -> Iterator[FaultUpstream]:
    f = FaultUpstream(domain.localstripe.url, sleep_seconds=3)
    yield f
    f.stop()


@pytest.fixture
def faulty(domain: Domain, fault: FaultUpstream) -> Iterator[ProxyDeps]:
    """Pipeline deps whose Stripe is the fault injector (timeout 1 s)."""
    http = httpx.Client(base_url=fault.url, timeout=1)
    yield replace(domain.deps, stripe_http=http, ledger=None)  # type: ignore[arg-type]
    fault.clear()
    http.close()


def test_replay_more_than_24_hours_later_touches_neither_cap_nor_stripe(domain: Domain) -> None:
    k = domain.vault.issue(key_request(expires_in="40d"))
    tag, t0 = new_tag(), now()
    first = charge(domain.deps, k["vault_key"], pi_params(2900, tag), key="order-1", at=t0)
    assert first.status == 200
    later = charge(domain.deps, k["vault_key"], pi_params(2900, tag), key="order-1", at=t0 + timedelta(hours=25))
    assert later.status == 200 and later.headers["Idempotent-Replayed"] == "true"
    assert later.json()["id"] == first.json()["id"]
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1
    assert domain.vault.describe(k["key_id"])["total_spent_cents"] == 2900
    # Past the retention period (30 days) the key is free again, as documented.
    fresh = charge(domain.deps, k["vault_key"], pi_params(2900, tag), key="order-1", at=t0 + timedelta(days=31))
    assert fresh.status == 200 and fresh.json()["id"] != first.json()["id"]


def test_daily_window_is_a_utc_day_and_lifetime_cap_holds(domain: Domain) -> None:
    k = domain.vault.issue(key_request(daily_usd_cap=50, total_usd_cap=80, expires_in="5d"))
    tag, t0 = new_tag(), datetime.combine(now().date(), datetime.min.time(), UTC) + timedelta(hours=23, minutes=59)
    assert charge(domain.deps, k["vault_key"], pi_params(4000, tag), at=t0).status == 200
    denied = charge(domain.deps, k["vault_key"], pi_params(2000, tag), at=t0)
    assert denied.status == 402 and denied.json()["error"]["code"] == "spend_cap_exceeded"
    assert denied.headers["Stripe-Should-Retry"] == "false"
    next_day = t0 + timedelta(minutes=2)
    assert charge(domain.deps, k["vault_key"], pi_params(2000, tag, **{"metadata[n]": "b"}), at=next_day).status == 200
    over_total = charge(domain.deps, k["vault_key"], pi_params(2500, tag, **{"metadata[n]": "c"}), at=next_day)
    assert over_total.status == 402  # 6000 + 2500 > 8000 lifetime
    assert len(tagged_objects(domain.localstripe.url, tag)) == 2


def test_a_full_cap_does_not_hide_an_earlier_answer(domain: Domain) -> None:
    """The record is learned from the reservation's create; a cap the charge itself filled
    must not turn its retry into a refusal."""
    k = domain.vault.issue(key_request(total_usd_cap=30, daily_usd_cap=30))
    tag = new_tag()
    first = charge(domain.deps, k["vault_key"], pi_params(3000, tag), key="fill")
    assert first.status == 200
    again = charge(domain.deps, k["vault_key"], pi_params(3000, tag), key="fill")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other_params = charge(domain.deps, k["vault_key"], pi_params(2900, tag), key="fill")
    assert other_params.json()["error"]["code"] == "idempotency_error"
    new = charge(domain.deps, k["vault_key"], pi_params(100, tag), key="new")
    assert (new.status, new.json()["error"]["code"]) == (402, "spend_cap_exceeded")
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1
    assert domain.vault.describe(k["key_id"])["total_spent_cents"] == 3000


def test_a_charge_reads_no_key_row_once_known_and_a_revoke_still_stops_everything(domain: Domain) -> None:
    """KnownKeys: a metered POST authenticates from the row this process read before, and its
    reservation's If-Match is what catches a revoke; requests that reserve nothing read the row."""
    k = domain.vault.issue(key_request())
    tag = new_tag()
    assert charge(domain.deps, k["vault_key"], pi_params(100, tag)).status == 200  # reads the row, remembers it
    assert domain.deps.known_keys is not None and domain.deps.known_keys.get(k["key_id"]) is not None
    reads: list[str] = []
    store = domain.deps.store
    original = store.read_key
    try:
        store.read_key = lambda key_id: (reads.append(key_id), original(key_id))[1]  # type: ignore[method-assign]
        assert charge(domain.deps, k["vault_key"], pi_params(101, tag)).status == 200
        assert reads == []  # the hot path read no key row
        domain.vault.revoke(k["key_id"])  # straight to storage, as another instance would: the cache is not told
        denied = charge(domain.deps, k["vault_key"], pi_params(102, tag))
        assert (denied.status, denied.json()["error"]["code"]) == (401, "vault_key_revoked")
        assert reads  # the failed reservation sent it to storage
        headers = {"Authorization": f"Bearer {k['vault_key']}"}
        listed = handle_proxy_request(domain.deps, "GET", "v1/payment_intents", headers, b"")
        assert (listed.status, listed.json()["error"]["code"]) == (401, "vault_key_revoked")
    finally:
        store.read_key = original  # type: ignore[method-assign]
    assert len(tagged_objects(domain.localstripe.url, tag)) == 2
    assert domain.vault.describe(k["key_id"])["total_spent_cents"] == 201


def test_a_stale_known_row_never_refuses_for_the_cap(domain: Domain) -> None:
    """A remembered key row whose counters say the cap is used up is not believed."""
    k = domain.vault.issue(key_request(total_usd_cap=30, daily_usd_cap=30))
    fresh = domain.deps.store.read_key(k["key_id"])
    assert fresh is not None and domain.deps.known_keys is not None
    full = Counters(now().date().isoformat(), 3000, 0, 3000, 0)
    domain.deps.known_keys.put(replace(fresh, counters=full, etag='W/"datetime\'2000-01-01T00%3A00%3A00Z\'"'))
    tag = new_tag()
    assert charge(domain.deps, k["vault_key"], pi_params(2500, tag)).status == 200
    over = charge(domain.deps, k["vault_key"], pi_params(600, tag))
    assert (over.status, over.json()["error"]["code"]) == (402, "spend_cap_exceeded")
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1


def test_expiry_takes_effect_on_the_next_request(domain: Domain) -> None:
    k = domain.vault.issue(key_request(expires_in="1h"))
    r = charge(domain.deps, k["vault_key"], pi_params(100, new_tag()), at=now() + timedelta(hours=1, seconds=1))
    assert r.status == 401 and r.json()["error"]["code"] == "vault_key_expired"


@pytest.mark.parametrize("mode", ["drop_after_forward", "500_after_forward", "sleep_after_forward"])
def test_retry_after_an_ambiguous_outcome_settles_the_object_stripe_created(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps, mode: str
) -> None:
    k = domain.vault.issue(key_request(daily_usd_cap=100))
    tag = new_tag()
    fault.arm(mode)
    first = charge(faulty, k["vault_key"], pi_params(2900, tag), key="amb-1")
    assert first.status in (500, 502) and first.headers["Stripe-Should-Retry"] == "true"
    assert domain.vault.describe(k["key_id"])["pending_cents"] == 2900  # still counts against the cap
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1  # Stripe did create it
    # An ambiguous record is not leased: the very next retry resolves it.
    retry = charge(faulty, k["vault_key"], pi_params(2900, tag), key="amb-1", at=now() + timedelta(seconds=1))
    assert retry.status == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    objects = tagged_objects(domain.localstripe.url, tag)
    assert len(objects) == 1 and retry.json()["id"] == objects[0]["id"]
    view = domain.vault.describe(k["key_id"])
    assert (view["spent_cents"], view["pending_cents"]) == (2900, 0)


def test_ambiguous_failure_where_stripe_did_nothing_is_forwarded_again(
    domain: Domain, fault: FaultUpstream, faulty: ProxyDeps
) -> None:
    k = domain.vault.issue(key_request())
    tag = new_tag()
    fault.arm("refuse")
    assert charge(faulty, k["vault_key"], pi_params(1500, tag), key="r-1").status == 500
    assert tagged_objects(domain.localstripe.url, tag) == []
    retry = charge(faulty, k["vault_key"], pi_params(1500, tag), key="r-1")
    assert retry.status == 200 and len(tagged_objects(domain.localstripe.url, tag)) == 1
    assert domain.vault.describe(k["key_id"])["spent_cents"] == 1500


def test_admin_reconcile_resolves_ambiguous_reservations(domain: Domain, fault: FaultUpstream, faulty: ProxyDeps) -> None:
    k = domain.vault.issue(key_request())
    tag = new_tag()
    fault.arm("drop_after_forward")
    charge(faulty, k["vault_key"], pi_params(1000, tag), key="a")
    fault.arm("refuse")
    charge(faulty, k["vault_key"], pi_params(700, tag), key="b")
    assert domain.vault.describe(k["key_id"])["pending_cents"] == 1700
    result = domain.vault.reconcile(k["key_id"])
    outcomes = sorted((r["idempotency_key"], r["outcome"]) for r in result["resolved"])
    # "b" is not found, but Stripe may still act on its key: it stays pending (issue 13, case 3).
    assert outcomes == [("a", "settled"), ("b", "pending")]
    view = domain.vault.describe(k["key_id"])
    assert (view["spent_cents"], view["pending_cents"]) == (1000, 700)
    # Once its lease and Stripe's 24 h window have passed, a lookup that still finds nothing is conclusive.
    later = VaultService(domain.tables, domain.settings, lambda: now() + timedelta(hours=24, minutes=2),
                         stripe_http=domain.stripe_http)
    assert [(r["idempotency_key"], r["outcome"]) for r in later.reconcile(k["key_id"])["resolved"]] == [("b", "released")]
    view = domain.vault.describe(k["key_id"])
    assert (view["spent_cents"], view["pending_cents"]) == (1000, 0)
    replay = charge(faulty, k["vault_key"], pi_params(1000, tag), key="a")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == tagged_objects(domain.localstripe.url, tag)[0]["id"]


def test_a_crash_between_reserve_and_forward_is_in_use_then_recovered(domain: Domain) -> None:
    k = domain.vault.issue(key_request())
    tag, t0 = new_tag(), now()

    def crash(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("process died")

    crashing = replace(domain.deps, stripe_http=httpx.Client(base_url="http://stripe.test", transport=httpx.MockTransport(crash)), ledger=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        charge(crashing, k["vault_key"], pi_params(800, tag), key="c-1", at=t0)
    busy = charge(domain.deps, k["vault_key"], pi_params(800, tag), key="c-1", at=t0)
    assert busy.status == 409 and busy.json()["error"]["code"] == "idempotency_key_in_use"
    assert busy.headers["Stripe-Should-Retry"] == "true"
    assert domain.vault.describe(k["key_id"])["pending_cents"] == 800
    after_lease = t0 + domain.deps.lease + timedelta(seconds=1)
    ok = charge(domain.deps, k["vault_key"], pi_params(800, tag), key="c-1", at=after_lease)
    assert ok.status == 200 and len(tagged_objects(domain.localstripe.url, tag)) == 1
    assert domain.vault.describe(k["key_id"])["spent_cents"] == 800


def test_unreachable_ledger_fails_closed(domain: Domain, fault: FaultUpstream) -> None:
    k = domain.vault.issue(key_request())
    dead = TableServiceClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + "a" * 88
        + ";TableEndpoint=http://127.0.0.1:9/devstoreaccount1;", retry_total=0)
    http = httpx.Client(base_url=fault.url, timeout=2)
    before = len(fault.forwarded)
    deps = ProxyDeps(LedgerStore(dead, domain.settings), http, domain.settings)
    r = charge(deps, k["vault_key"], pi_params(100, new_tag()))
    assert r.status == 503 and r.json()["error"]["code"] == "governance_unavailable"
    assert r.headers["Stripe-Should-Retry"] == "true"
    assert len(fault.forwarded) == before


def test_a_secret_echoed_by_the_upstream_is_scrubbed_everywhere(domain: Domain) -> None:
    k = domain.vault.issue(key_request())
    secret = domain.settings.stripe_secret_key

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"type": "invalid_request_error",
                                                    "message": f"bad key {request.headers['Authorization']}"}})

    echoing = replace(domain.deps, stripe_http=httpx.Client(base_url="http://stripe.test", transport=httpx.MockTransport(echo)), ledger=None)  # type: ignore[arg-type]
    first = charge(echoing, k["vault_key"], pi_params(100, new_tag()), key="echo")
    replay = charge(echoing, k["vault_key"], pi_params(100, new_tag()), key="echo")
    assert first.status == 400 and secret not in first.body.decode() and "sk_***" in first.body.decode()
    assert replay.status == 400  # a different body → idempotency_error, still no secret
    record = domain.deps.store.read_key_and_idem(k["key_id"], "idem-" + hashlib.sha256(b"echo").hexdigest())[1]
    assert record is not None and record.state == "completed" and secret not in (record.body or "")
    assert domain.vault.describe(k["key_id"])["pending_cents"] == 0  # a definite 4xx releases


def test_json_body_is_forwarded_as_stripe_form_encoding(domain: Domain) -> None:
    k = domain.vault.issue(key_request())
    tag = new_tag()
    body = {"amount": 1100, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa",
            "metadata": {"test_tag": tag, "plan": "pro"}}
    headers = {"Authorization": f"Bearer {k['vault_key']}", "Content-Type": "application/json"}
    r = handle_proxy_request(domain.deps, "POST", "v1/payment_intents", headers, json.dumps(body).encode())
    assert r.status == 200
    [obj] = tagged_objects(domain.localstripe.url, tag)
    assert obj["metadata"]["plan"] == "pro" and obj["amount"] == 1100
    assert domain.vault.describe(k["key_id"])["spent_cents"] == 1100


def test_refunds_count_against_the_cap_priced_from_the_charge_when_no_amount_is_given(domain: Domain) -> None:
    """Money leaving the account is spend too; an amount-less refund costs what is left of the charge."""
    k = domain.vault.issue(key_request(daily_usd_cap=45))
    pi = charge(domain.deps, k["vault_key"], pi_params(2000, new_tag())).json()
    charge_id = pi["latest_charge"]["id"] if isinstance(pi["latest_charge"], dict) else pi["latest_charge"]  # localstripe expands it
    headers = {"Authorization": f"Bearer {k['vault_key']}", "Content-Type": "application/x-www-form-urlencoded"}
    part = handle_proxy_request(domain.deps, "POST", "v1/refunds", headers, f"payment_intent={pi['id']}&amount=500".encode())
    assert part.status == 200 and part.json()["amount"] == 500
    rest = handle_proxy_request(domain.deps, "POST", "v1/refunds", headers,
                                f"charge={charge_id}".encode())
    assert rest.status == 200 and rest.json()["object"] == "refund"
    view = domain.vault.describe(k["key_id"])
    # Priced at what the charge had left (amount − amount_refunded = 1500), read just before reserving.
    assert (view["spent_cents"], view["pending_cents"]) == (2000 + 500 + 1500, 0)
    over = handle_proxy_request(domain.deps, "POST", "v1/refunds", headers, f"payment_intent={pi['id']}&amount=1000".encode())
    assert (over.status, over.json()["error"]["code"]) == (402, "spend_cap_exceeded")
    refunds = [r for r in domain.stripe_http.get("/v1/refunds", params={"charge": charge_id},
               headers={"Authorization": f"Bearer {domain.settings.stripe_secret_key}"}).json()["data"]]
    assert len(refunds) == 2


def test_auto_idempotency_can_be_turned_off_per_key(domain: Domain) -> None:
    on, off = domain.vault.issue(key_request()), domain.vault.issue(key_request(auto_idempotency=False))
    tag_on, tag_off = new_tag(), new_tag()
    for _ in range(2):
        charge(domain.deps, on["vault_key"], pi_params(300, tag_on))
        charge(domain.deps, off["vault_key"], pi_params(300, tag_off))
    assert len(tagged_objects(domain.localstripe.url, tag_on)) == 1
    assert len(tagged_objects(domain.localstripe.url, tag_off)) == 2


def test_in_app_keys_travel_as_ids_and_authenticate_only_when_derived_with_the_app_secret(domain: Domain) -> None:
    """A billing run's key: issued without a secret in the answer, re-derived from its id."""
    issued = domain.vault.issue_in_app(key_request(daily_usd_cap=1))
    assert "vault_key" not in issued
    tag = new_tag()
    good = domain.vault.in_app_vault_key(issued["key_id"])
    assert charge(domain.deps, good, pi_params(60, tag)).status == 200
    other_root = "sk_test_someone_elses_" + "x" * 20
    forged = f"vk_{issued['key_id']}_{hashlib.sha256(other_root.encode()).hexdigest()}"
    denied = charge(domain.deps, forged, pi_params(60, tag))
    assert (denied.status, json.loads(denied.body)["error"]["code"]) == (401, "vault_key_invalid")
    # an ordinary key's id does not turn into a working key this way
    plain = domain.vault.issue(key_request(daily_usd_cap=1))
    guessed = charge(domain.deps, domain.vault.in_app_vault_key(plain["key_id"]), pi_params(60, tag))
    assert guessed.status == 401
    assert len(tagged_objects(domain.localstripe.url, tag)) == 1


def test_a_revoked_or_expired_key_replays_completed_requests_and_nothing_else(domain: Domain) -> None:
    """A retry after a revoke learns what already happened; nothing new reaches Stripe."""
    k = domain.vault.issue(key_request(expires_in="1h"))
    tag = new_tag()
    first = charge(domain.deps, k["vault_key"], pi_params(700, tag), key="run-7")
    assert first.status == 200
    domain.vault.revoke(k["key_id"])
    again = charge(domain.deps, k["vault_key"], pi_params(700, tag), key="run-7")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    for params, idem_key in [(pi_params(700, tag), "run-8"), (pi_params(701, tag), "run-7"), (pi_params(700, tag), None)]:
        denied = charge(domain.deps, k["vault_key"], params, key=idem_key)
        assert (denied.status, denied.json()["error"]["code"]) == (401, "vault_key_revoked")
    forged = k["vault_key"][:-4] + "AAAA"
    assert charge(domain.deps, forged, pi_params(700, tag), key="run-7").status == 401  # the holder only
    # Without an explicit Idempotency-Key (the proxy derives one), a repeat is denied, not replayed.
    k3 = domain.vault.issue(key_request())
    assert charge(domain.deps, k3["vault_key"], pi_params(900, tag)).status == 200
    domain.vault.revoke(k3["key_id"])
    assert charge(domain.deps, k3["vault_key"], pi_params(900, tag)).json()["error"]["code"] == "vault_key_revoked"
    later = now() + timedelta(hours=2)
    k2 = domain.vault.issue(key_request(expires_in="1h"))
    assert charge(domain.deps, k2["vault_key"], pi_params(800, tag), key="x").status == 200
    assert charge(domain.deps, k2["vault_key"], pi_params(800, tag), key="x", at=later).status == 200
    expired = charge(domain.deps, k2["vault_key"], pi_params(800, tag), key="y", at=later)
    assert (expired.status, expired.json()["error"]["code"]) == (401, "vault_key_expired")
    assert len(tagged_objects(domain.localstripe.url, tag)) == 3
    assert domain.vault.describe(k["key_id"])["total_spent_cents"] == 700
