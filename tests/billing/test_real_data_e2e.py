"""Issue 19 over HTTP: billing runs against customers shaped the way real Stripe accounts hold them.

devhost runs the real app on Azurite and localstripe. Each test is one numbered case of the
issue; every assertion is on real state (payment intents in localstripe, keys in the vault,
the run's answers). Where localstripe lacks a Stripe behaviour, a `FaultProxy` in front of it
gives the answer Stripe documents (cited at each rewrite).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from agents.tools import BillingTools
from devhost.seed import DECLINING_CARD, LEGACY, MODERN, card_payment_method, create_customer, iter_objects
from devhost.services import Service, free_port
from tests.billing.e2e import FINISHED, get_run, start_run, unique_plan, wait_until
from tests.billing.faultproxy import PASS, FaultProxy, Seen
from tests.billing.test_billing_e2e import _own_devhost
from tests.conftest import STRIPE_TEST_SECRET, AppStack

pytestmark = pytest.mark.integration


def stripe(stack: AppStack) -> httpx.Client:
    return httpx.Client(base_url=stack.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30)


def intents(stack: AppStack, customer: str) -> list[dict[str, Any]]:
    """The customer's payment intents in localstripe."""
    return [pi for pi in iter_objects(stack.localstripe.url, STRIPE_TEST_SECRET, "payment_intents")
            if pi.get("customer") == customer]


def paid(stack: AppStack, customers: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Succeeded payment intents per customer."""
    wanted = set(customers)
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in customers}
    for pi in iter_objects(stack.localstripe.url, STRIPE_TEST_SECRET, "payment_intents"):
        if pi.get("customer") in wanted and pi.get("status") == "succeeded":
            out[pi["customer"]].append(pi)
    return out


def listed(customers: list[str], period: str = "2026-06", amount: int = 2900, **extra: Any) -> dict[str, Any]:
    return {
        "billing_period": period,
        "budget_usd": 1000,
        "customers": [{"customer_id": c, "amount_cents": amount} for c in customers],
        **extra,
    }


def finish(stack: AppStack, body: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    base = base or stack.url
    run = wait_until(base, stack.admin_headers, start_run(base, stack.admin_headers, body))
    assert run["runtime_status"] == "Completed", run
    return dict(run["output"])


def by_customer(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["customer_id"]: i for i in out["items"]}


def issue_key(stack: AppStack, base: str, label: str, endpoints: list[str], cap: float) -> dict[str, Any]:
    resp = httpx.post(f"{base}/api/vault/keys", headers=stack.admin_headers, timeout=30, json={
        "vendor": "stripe", "label": label, "daily_usd_cap": cap, "allowed_endpoints": endpoints, "expires_in": "1h"})
    assert resp.status_code in (200, 201), resp.text
    return dict(resp.json())


def agent_tools(stack: AppStack, base: str | None = None) -> BillingTools:
    """Agent tools with a billing and an audit key issued on the devhost at `base`."""
    base = base or stack.url
    label = unique_plan("agent19")
    billing = issue_key(stack, base, f"{label}/billing", ["POST /v1/payment_intents"], 500)
    audit = issue_key(stack, base, f"{label}/audit", ["GET /v1/customers/*", "GET /v1/payment_methods",
                                                      "GET /v1/payment_intents/*"], 0.01)
    return BillingTools(f"{base}/api/stripe", billing_key=billing["vault_key"],
                        audit_key=audit["vault_key"], backoff_seconds=0.05)


# --- 5. only money that moves counts ---------------------------------------------------------

THREE_D_SECURE_CARD = "4000002500003155"  # localstripe leaves its payment intent in requires_action


def test_5_an_unpaid_3ds_intent_is_canceled_and_eats_no_budget(app_stack: AppStack) -> None:
    """A budget of $87 for two 3-D Secure customers and three good ones at $29, four charges in flight:
    the 3-D Secure intents are canceled through the proxy and released, so all three good customers are
    charged and /spend agrees. Whichever of the first four is refused while the holds are pending (the
    fifth reservation does not fit), the run's recheck charges it once they are released."""
    plan = unique_plan("three-ds")
    with stripe(app_stack) as client:
        secure = [create_customer(client, name=f"{plan} 3ds {i}", plan=plan, card=THREE_D_SECURE_CARD) for i in range(2)]
        good = [create_customer(client, name=f"{plan} {i}", plan=plan) for i in range(3)]
    body = {**listed([*secure, *good]), "budget_usd": 87, "max_parallel": 4}
    run_id = start_run(app_stack.url, app_stack.admin_headers, body)
    run = wait_until(app_stack.url, app_stack.admin_headers, run_id)
    out = run["output"]
    items = by_customer(out)
    assert [items[c]["outcome"] for c in good] == ["charged"] * 3 and out.get("stopped") is None, out
    for customer in secure:
        assert items[customer]["outcome"] == "declined" and items[customer]["code"] == "requires_action", out
        assert "canceled" in items[customer]["reason"]
        [intent] = intents(app_stack, customer)
        assert intent["status"] == "canceled" and items[customer]["object_id"] == intent["id"]
    assert {c: len(v) for c, v in paid(app_stack, good).items()} == dict.fromkeys(good, 1)
    spend = httpx.get(f"{app_stack.url}/api/billing/runs/{run_id}/spend", headers=app_stack.admin_headers,
                      timeout=30).json()
    assert out["spent_cents"] == 8700 and spend["spent_cents"] == 8700 and spend.get("pending_cents", 0) == 0, spend


# --- 1. modern cards are charged; one card resolution --------------------------------------


def test_1_modern_legacy_and_only_card_customers_are_charged_with_their_own_card(app_stack: AppStack) -> None:
    plan = unique_plan("shapes")
    with stripe(app_stack) as client:
        modern = [create_customer(client, name=f"modern {i}", plan=plan, shape=MODERN) for i in range(3)]
        legacy = create_customer(client, name="legacy", plan=plan, shape=LEGACY)
        only = card_payment_method(client)  # attached, never made the default
        only_card = client.post("/v1/customers", data={"name": "one card", "metadata[plan]": plan,
                                                       "payment_method": only}).json()["id"]
        two_cards = client.post("/v1/customers", data={"name": "two cards", "metadata[plan]": plan,
                                                       "payment_method": card_payment_method(client)}).json()["id"]
        client.post(f"/v1/payment_methods/{card_payment_method(client)}/attach", data={"customer": two_cards})
        defaults = {c: client.get(f"/v1/customers/{c}").json() for c in (*modern, legacy)}
    body = {"billing_period": "2026-06", "budget_usd": 1000,
            "customer_query": {"metadata": {"plan": plan}, "amount_cents": 2900}}
    items = by_customer(finish(app_stack, body))
    for c in modern:
        assert (items[c]["outcome"], items[c].get("card_source")) == ("charged", "default_payment_method"), items[c]
        assert [pi["payment_method"] for pi in intents(app_stack, c)] == [
            defaults[c]["invoice_settings"]["default_payment_method"]]
    assert (items[legacy]["outcome"], items[legacy].get("card_source")) == ("charged", "default_source")
    assert [pi["payment_method"] for pi in intents(app_stack, legacy)] == [defaults[legacy]["default_source"]]
    assert (items[only_card]["outcome"], items[only_card].get("card_source")) == ("charged", "only_card")
    assert [pi["payment_method"] for pi in intents(app_stack, only_card)] == [only]
    # Two cards and no default: nothing is guessed.
    assert (items[two_cards]["outcome"], items[two_cards]["code"]) == ("invalid", "no_payment_method")
    assert intents(app_stack, two_cards) == []
    # The agent tool resolves the card the same way.
    with agent_tools(app_stack) as tools:
        out = json.loads(tools.charge_stripe(only_card, 2900, "2026-07"))
    assert out["status"] == "succeeded" and len(intents(app_stack, only_card)) == 2


# --- 2. one charge per customer and period, across runs and agents --------------------------


def test_2_a_second_run_or_an_agent_bills_nobody_already_billed_for_the_period(app_stack: AppStack) -> None:
    plan = unique_plan("once")
    with stripe(app_stack) as client:
        customers = [create_customer(client, name=f"once {i}", plan=plan, shape=LEGACY) for i in range(3)]
    first = by_customer(finish(app_stack, listed(customers, "2026-09")))
    second = finish(app_stack, listed(customers, "2026-09"))
    assert {c: len(v) for c, v in paid(app_stack, customers).items()} == dict.fromkeys(customers, 1)
    assert second["counts"].get("already_charged") == 3 and second["spent_cents"] == 0
    for item in second["items"]:
        assert item["object_id"] == first[item["customer_id"]]["object_id"] and item["code"] == "already_charged"
    assert {c: len(v) for c, v in paid(app_stack, customers).items()} == dict.fromkeys(customers, 1)

    with agent_tools(app_stack) as tools:
        again = json.loads(tools.charge_stripe(customers[0], 2900, "2026-09"))
        other_amount = json.loads(tools.charge_stripe(customers[0], 3100, "September 2026"))
        assert again["error"] == other_amount["error"] == "already_charged"
        assert again["charge_id"] == other_amount["charge_id"] == first[customers[0]]["object_id"]
        assert len(intents(app_stack, customers[0])) == 1
        # A deliberate second charge names its own purpose (invoice id).
        extra = json.loads(tools.charge_stripe(customers[0], 3100, "2026-09", "inv-extra-1"))
        assert extra["status"] == "succeeded"
        # An agent first, then a run: the run bills nobody twice either.
        agent_first = json.loads(tools.charge_stripe(customers[1], 2900, "2026-10"))
    later = by_customer(finish(app_stack, listed(customers[1:2], "2026-10")))
    assert later[customers[1]]["outcome"] == "already_charged"
    assert later[customers[1]]["object_id"] == agent_first["charge_id"]
    assert len(intents(app_stack, customers[1])) == 2  # 2026-09 and 2026-10, one each


def test_2_two_runs_racing_for_the_same_customers_charge_each_once(app_stack: AppStack) -> None:
    plan = unique_plan("race")
    with stripe(app_stack) as client:
        customers = [create_customer(client, name=f"race {i}", plan=plan, shape=LEGACY) for i in range(3)]
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(
        start_run(app_stack.url, app_stack.admin_headers, listed(customers, "2026-11")))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [wait_until(app_stack.url, app_stack.admin_headers, i)["output"] for i in ids]
    assert {c: len(v) for c, v in paid(app_stack, customers).items()} == dict.fromkeys(customers, 1)
    assert sum(o["counts"]["charged"] for o in outs) == 3
    assert sum(o["counts"].get("already_charged", 0) for o in outs) == 3


# --- 3. a customer listed twice -------------------------------------------------------------


def test_3_a_customer_listed_twice_is_refused_unless_the_purposes_differ(app_stack: AppStack) -> None:
    with stripe(app_stack) as client:
        c0, c1 = (create_customer(client, name=f"twice {i}", plan=unique_plan("twice"), shape=LEGACY) for i in range(2))
    refused = httpx.post(f"{app_stack.url}/api/billing/runs", headers=app_stack.admin_headers, timeout=30,
                         json=listed([c0, c1, c0]))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "duplicate_customers" and "indexes 0, 2" in error["message"] and c0 in error["message"]
    assert intents(app_stack, c0) == []
    body = listed([c0, c0])
    body["customers"][0]["purpose"], body["customers"][1]["purpose"] = "inv-1", "inv-2"
    out = finish(app_stack, body)
    assert out["counts"]["charged"] == 2
    assert sorted(pi["metadata"]["purpose"] for pi in intents(app_stack, c0)) == ["inv-1", "inv-2"]


# --- 4. the caller's card is never replaced ---------------------------------------------------


def test_4_an_explicit_payment_method_is_charged_even_when_the_customer_is_listed_again(app_stack: AppStack) -> None:
    with stripe(app_stack) as client:
        customer = create_customer(client, name="explicit", plan=unique_plan("explicit"))
        default = client.get(f"/v1/customers/{customer}").json()["invoice_settings"]["default_payment_method"]
        chosen = card_payment_method(client)
        client.post(f"/v1/payment_methods/{chosen}/attach", data={"customer": customer}).raise_for_status()
        bare = client.post("/v1/customers", data={"name": "no default"}).json()["id"]
        bare_card = card_payment_method(client)
        client.post(f"/v1/payment_methods/{bare_card}/attach", data={"customer": bare}).raise_for_status()
        client.post(f"/v1/payment_methods/{card_payment_method(client)}/attach", data={"customer": bare})
    body = {"billing_period": "2026-06", "budget_usd": 1000, "customers": [
        {"customer_id": customer, "amount_cents": 1100, "payment_method": chosen, "purpose": "explicit"},
        {"customer_id": customer, "amount_cents": 1200, "purpose": "default"},
        {"customer_id": bare, "amount_cents": 1300, "payment_method": bare_card, "purpose": "explicit"},
        {"customer_id": bare, "amount_cents": 1400, "purpose": "default"},
    ]}
    out = finish(app_stack, body)
    assert [(i["outcome"], i["card_source"]) for i in out["items"]] == [
        ("charged", "explicit"), ("charged", "default_payment_method"), ("charged", "explicit"),
        ("invalid", None)]
    assert out["items"][3]["code"] == "no_payment_method"
    cards = {pi["amount"]: pi["payment_method"] for c in (customer, bare) for pi in intents(app_stack, c)}
    assert cards == {1100: chosen, 1200: default, 1300: bare_card}


# --- 6. a stop that races the start leaves no key --------------------------------------------


def _active_keys(stack: AppStack, labels: list[str]) -> list[str]:
    active = []
    for label in labels:
        page = httpx.get(f"{stack.url}/api/vault/keys", params={"label": label}, headers=stack.admin_headers,
                         timeout=30).json()
        active += [k["key_id"] for k in page["data"] if k["status"] == "active"]
    return active


def test_6_stop_racing_start_50_times_leaves_no_active_key(app_stack: AppStack) -> None:
    with stripe(app_stack) as client:
        customers = [create_customer(client, name=f"stop race {i}", plan=unique_plan("stoprace")) for i in range(2)]
    body = listed(customers, "2026-06")  # no card given: the run also mints its read key
    run_ids = [f"race19-{uuid.uuid4().hex[:8]}-{n}" for n in range(50)]
    headers = app_stack.admin_headers

    def start_then_stop(run_id: str) -> None:
        with httpx.Client(base_url=app_stack.url, headers=headers, timeout=30) as http:
            assert http.post("/api/billing/runs", json={**body, "instance_id": run_id}).status_code == 202
            stopped = http.post(f"/api/billing/runs/{run_id}/stop")
            assert stopped.status_code == 200, stopped.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(start_then_stop, run_ids))
    labels = [label for r in run_ids for label in (f"azure-durable/{r}", f"azure-durable/{r}/customers")]
    deadline = time.monotonic() + 90
    while any(get_run(app_stack.url, headers, r)["runtime_status"] not in FINISHED for r in run_ids):
        assert time.monotonic() < deadline, "runs still running after their stop"
        time.sleep(0.5)
    # An activity dispatched before the stop may still be minting: look until two looks in a
    # row agree; then no key of any stopped run may be active.
    looks = [_active_keys(app_stack, labels)]
    while len(looks) < 2 or looks[-1] != looks[-2]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
        looks.append(_active_keys(app_stack, labels))
    assert looks[-1] == []


# --- 7. a stopped run accounts for every customer ---------------------------------------------


def test_7_a_stopped_run_lists_every_customer_and_matches_stripe(app_stack: AppStack) -> None:
    plan = unique_plan("account")
    with stripe(app_stack) as client:
        customers = {create_customer(client, name=f"account {i}", plan=plan, shape=LEGACY) for i in range(40)}
    base, headers = app_stack.url, app_stack.admin_headers
    body = {"billing_period": "2026-06", "budget_usd": 5000, "max_parallel": 4,
            "customer_query": {"metadata": {"plan": plan}, "amount_cents": 2900}}
    run_id = start_run(base, headers, body)
    wait_until(base, headers, run_id, done_at_least=8)
    assert httpx.post(f"{base}/api/billing/runs/{run_id}/stop", headers=headers, timeout=30).status_code == 200
    assert wait_until(base, headers, run_id)["runtime_status"] == "Terminated"
    described = get_run(base, headers, run_id)
    items = described["items"]
    assert [i["item_index"] for i in items] == list(range(40))
    assert {i["customer_id"] for i in items} == customers
    charged_in_stripe = {pi["customer"] for c in paid(app_stack, sorted(customers)).values() for pi in c}
    assert {i["customer_id"] for i in items if i["outcome"] == "charged"} == charged_in_stripe
    assert described["progress"]["charged"] == len(charged_in_stripe) < 40
    never = [i for i in items if i["outcome"] == "skipped"]
    assert never and all(i["reason"] == "stopped" for i in never)
    assert described["progress"]["done"] == 40


# --- 8. reasons that do not mislead --------------------------------------------------------------


DELETED: set[str] = set()


def real_stripe_shapes(seen: Seen, status: int, content: bytes) -> tuple[int, bytes] | None:
    """localstripe → the answers Stripe documents.

    - `GET /v1/customers/{id}` of a deleted customer: Stripe answers 200 with
      `{"id", "object": "customer", "deleted": true}` (docs.stripe.com/api/customers/delete,
      docs.stripe.com/api/customers/retrieve); localstripe answers 404.
    - A declined payment intent: Stripe's error carries the intent (`error.payment_intent`,
      docs.stripe.com/api/errors); localstripe names only the failed charge.
    """
    parts = seen.path.strip("/").split("/")
    if seen.method == "GET" and parts[:2] == ["v1", "customers"] and len(parts) == 3 and parts[2] in DELETED:
        return 200, json.dumps({"id": parts[2], "object": "customer", "deleted": True}).encode()
    if seen.method == "POST" and seen.path == "/v1/payment_intents" and status == 402:
        body = json.loads(content)
        charge = body.get("error", {}).get("charge")
        if charge:
            with httpx.Client(auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
                pi_id = client.get(f"{LOCALSTRIPE[0]}/v1/charges/{charge}").json()["payment_intent"]
                body["error"]["payment_intent"] = client.get(f"{LOCALSTRIPE[0]}/v1/payment_intents/{pi_id}").json()
            return status, json.dumps(body).encode()
    return None


LOCALSTRIPE: list[str] = []


@pytest.fixture
def real_shaped_stack(app_stack: AppStack) -> Iterator[Service]:
    LOCALSTRIPE[:] = [app_stack.localstripe.url]
    to_stripe = FaultProxy(app_stack.localstripe.url, lambda seen, attempt: PASS, real_stripe_shapes).start()
    port = free_port()
    host = _own_devhost(app_stack.azurite, app_stack.localstripe, "realshapes", port, STRIPE_API_BASE=to_stripe.url)
    yield host
    host.stop()
    to_stripe.stop()


def test_8_deleted_missing_and_declined_customers_get_true_reasons(
    app_stack: AppStack, real_shaped_stack: Service
) -> None:
    with stripe(app_stack) as client:
        good = create_customer(client, name="good", plan=unique_plan("reasons"), shape=LEGACY)
        declining = create_customer(client, name="declines", plan=unique_plan("reasons"), card=DECLINING_CARD,
                                    shape=LEGACY)
        deleted = create_customer(client, name="deleted", plan=unique_plan("reasons"), shape=LEGACY)
        client.delete(f"/v1/customers/{deleted}").raise_for_status()
    DELETED.add(deleted)
    out = finish(app_stack, listed([good, declining, deleted, "cus_doesnotexist19"]), base=real_shaped_stack.url)
    items = by_customer(out)
    assert items[good]["outcome"] == "charged"
    assert (items[deleted]["outcome"], items[deleted]["code"]) == ("invalid", "customer_deleted")
    assert (items["cus_doesnotexist19"]["outcome"], items["cus_doesnotexist19"]["code"]) == (
        "invalid", "no_such_customer")
    assert items[declining]["outcome"] == "declined"
    assert items[declining]["object_id"] == intents(app_stack, declining)[0]["id"]
    assert intents(app_stack, declining)[0]["status"] == "requires_payment_method"
    with agent_tools(app_stack, real_shaped_stack.url) as tools:
        assert json.loads(tools.charge_stripe(deleted, 2900, "2026-06"))["error"] == "customer_deleted"
        assert json.loads(tools.charge_stripe("cus_doesnotexist19", 2900, "2026-06"))["error"] == "no_such_customer"


def test_8_odd_runs_are_warned_before_charging(app_stack: AppStack) -> None:
    base, headers = app_stack.url, app_stack.admin_headers
    nobody = {"billing_period": "2026-06", "budget_usd": 100,
              "customer_query": {"metadata": {"plan": unique_plan("nobody")}, "amount_cents": 2900}}
    out = finish(app_stack, nobody)
    assert [w["code"] for w in out.get("warnings", [])] == ["no_customers"] and out["total"] == 0

    with stripe(app_stack) as client:
        customers = [create_customer(client, name=f"poor {i}", plan=unique_plan("poor")) for i in range(2)]
    started = httpx.post(f"{base}/api/billing/runs", headers=headers, timeout=30,
                         json={**listed(customers), "budget_usd": 10})
    assert started.status_code == 202
    assert [w["code"] for w in started.json()["warnings"]] == ["budget_below_smallest_charge"]
    out = wait_until(base, headers, started.json()["id"])["output"]
    codes = [w["code"] for w in out["warnings"]]
    assert "budget_below_smallest_charge" in codes and out["counts"]["charged"] == 0
    # localstripe reports every customer's currency as eur: the run says so before it charges.
    foreign = next(w for w in out["warnings"] if w["code"] == "non_usd_customers")
    assert foreign["count"] == 2 and foreign["currencies"] == {"eur": 2}
    assert sorted(foreign["customer_ids"]) == sorted(customers)
