"""Unit tests of the billing orchestrators, driving the registered generators (no Azurite)."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing.payloads import ChargeItem, ChargeRequest, CustomerQuery, Endpoint, FetchRequest, ItemOutcome, RunRequest
from orchestrators import billing as orch
from tests.billing.fakes import FakeContext, drive


def registered(function: Any) -> Callable[[Any], Generator[Any, Any, Any]]:
    """The undecorated orchestrator behind a blueprint registration (as the SDK samples do)."""
    return function.build().get_user_function().orchestrator_function


RUN = registered(orch.billing_run)
LANE = registered(orch.billing_lane)
BATCH = registered(orch.billing_batch)


class World:
    """Activities over an in-memory 'proxy': one cap per key, declines, faults, revokes."""

    def __init__(
        self,
        *,
        declined: frozenset[str] = frozenset(),
        fail_times: dict[int, int] | None = None,
        revoke_after: int | None = None,
        customers: list[dict[str, Any]] | None = None,
        held: tuple[str, int] | None = None,
    ) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.declined = declined
        self.fail_times = dict(fail_times or {})  # item index -> activity failures still to come
        self.revoke_after = revoke_after  # revoke the charge key after this many charges
        self.customers = customers or []
        self.charged: dict[str, str] = {}  # idempotency key -> object id
        self.revoked_labels: list[tuple[str, ...]] = []
        # (customer, n): that customer's intent is left unpaid (3-D Secure) and its amount stays
        # held at the "proxy" through the next n charges, then the cancel releases it.
        self.held = held
        self.holding: list[int] = []  # [amount, charges left] while a hold is pending

    def activities(self) -> dict[str, Callable[[Any], Any]]:
        return {
            orch.ISSUE_KEY: self.issue,
            orch.FETCH_CUSTOMERS: self.fetch,
            orch.CHARGE_CUSTOMER: self.charge,
            orch.REVOKE_KEYS: self.revoke,
        }

    def issue(self, payload: dict[str, Any]) -> dict[str, Any]:
        key_id = f"key{len(self.keys)}"
        self.keys[key_id] = {"cap": payload["cap_cents"], "spent": 0, "active": True}
        return {
            "key_id": key_id,
            "label": payload["label"],
            "cap_cents": payload["cap_cents"],
        }

    def fetch(self, payload: dict[str, Any]) -> dict[str, Any]:
        request = FetchRequest.from_dict(payload)
        assert request.query is not None
        items = [
            ChargeItem(c["id"], request.query.amount_cents, c["default_source"]).to_dict()
            for c in self.customers
            if request.query.matches(c)
        ]
        return {"items": items, "failure_code": None, "pages": 1 + len(self.customers) // 100}

    def charge(self, payload: dict[str, Any]) -> dict[str, Any]:
        request = ChargeRequest.from_dict(payload)
        if self.fail_times.get(request.item_index, 0) > 0:
            self.fail_times[request.item_index] -= 1
            raise RuntimeError("transient fault, retries exhausted")
        key_id = request.key_id
        key = self.keys[key_id]
        base = {
            "item_index": request.item_index,
            "customer_id": request.item.customer_id,
            "amount_cents": request.item.amount_cents,
        }
        if request.idempotency_key in self.charged:
            return {**base, "outcome": "charged", "object_id": self.charged[request.idempotency_key], "replayed": True}
        if not key["active"]:
            return {**base, "outcome": "revoked", "code": "vault_key_revoked"}
        pending = self.holding[0] if self.holding else 0
        if self.holding:
            self.holding[1] -= 1
            if self.holding[1] <= 0:
                self.holding = []
        if key["spent"] + pending + request.item.amount_cents > key["cap"]:
            return {**base, "outcome": "cap_exceeded", "code": "spend_cap_exceeded"}
        if self.held is not None and request.item.customer_id == self.held[0]:
            self.holding = [request.item.amount_cents, self.held[1]]
            return {**base, "outcome": "declined", "code": "requires_action", "object_id": "pi_3ds"}
        if request.item.customer_id in self.declined:
            return {**base, "outcome": "declined", "code": "card_declined"}
        key["spent"] += request.item.amount_cents
        self.charged[request.idempotency_key] = f"pi_{len(self.charged)}"
        if self.revoke_after is not None and len(self.charged) >= self.revoke_after:
            key["active"] = False
        return {**base, "outcome": "charged", "object_id": self.charged[request.idempotency_key]}

    def revoke(self, payload: dict[str, Any]) -> list[str]:
        self.revoked_labels.append(tuple(payload["labels"]))
        ids = [k for k, v in self.keys.items() if v["active"]]
        for k in ids:
            self.keys[k]["active"] = False
        return ids


def run(world: World, request: RunRequest, instance_id: str = "run1") -> tuple[dict[str, Any], FakeContext]:
    context = FakeContext(instance_id, request.to_dict(), world.activities(), {orch.LANE_ORCHESTRATOR: LANE, orch.BATCH_ORCHESTRATOR: BATCH})
    return drive(RUN, context), context


def batch_calls(ctx: FakeContext) -> list[Any]:
    return [c for c in ctx.calls if c.kind == "sub" and c.name == orch.BATCH_ORCHESTRATOR]


def customers(n: int, amount: int = 2900) -> tuple[ChargeItem, ...]:
    return tuple(ChargeItem(f"cus_{i}", amount, f"card_{i}") for i in range(n))


def test_charges_everyone_within_budget_in_bounded_batches() -> None:
    world = World()
    output, ctx = run(world, RunRequest("2026-06", budget_cents=200 * 2900, customers=customers(200)))
    assert output["counts"]["charged"] == 200
    assert output["spent_cents"] == 200 * 2900 == output["cap_cents"]
    lanes = [c for c in ctx.calls if c.kind == "sub" and c.name == orch.LANE_ORCHESTRATOR]
    assert [c.instance_id for c in lanes] == ["run1:lane-0", "run1:lane-1"]  # two lanes under one task_all
    assert [[b["batch_no"] for b in c.input["batches"]] for c in lanes] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [len(c.input["items"]) for c in batch_calls(ctx)] == [25] * 8  # batches of max_parallel / 2
    # The first activity issues the spending key: label, cap and the one endpoint.
    first = ctx.calls[0]
    assert first.name == orch.ISSUE_KEY
    assert first.input["label"] == "azure-durable/run1"
    assert first.input["cap_cents"] == 580000
    assert first.input["allowed_endpoints"] == ["POST /v1/payment_intents", "POST /v1/payment_intents/*/cancel"]
    # Idempotency keys are {instanceId}-{itemIndex}, unique across batches.
    # (The fake runs lane 0's batches before lane 1's: sorted by item index.)
    keys = [ChargeRequest.from_dict(c.input).idempotency_key for c in ctx.activity_calls(orch.CHARGE_CUSTOMER)]
    assert sorted(keys, key=lambda k: int(k.rsplit("-", 1)[1])) == [f"run1-{i}" for i in range(200)]
    # Keys revoked at the end, both labels; the output and statuses hold key ids only.
    assert ctx.calls[-1].name == orch.REVOKE_KEYS
    assert world.revoked_labels == [("azure-durable/run1", "azure-durable/run1/customers")]
    assert "vk_" not in json.dumps(output) and "vk_" not in json.dumps(ctx.statuses)
    assert output["key_ids"] == {"charge": "key0", "customers": None}
    assert "vk_" not in json.dumps([c.input for c in ctx.calls])  # activity inputs land in history too
    assert ctx.statuses[-1] == {
        "done": 200,
        "total": 200,
        "charged": 200,
        "counts": {"charged": 200},
        "skipped_by_reason": {},
        "spent_cents": 580000,
        "cap_cents": 580000,
        "stopped": None,
        "warnings": [],
    }


def test_half_budget_charges_exactly_half_then_skips_the_rest() -> None:
    world = World()
    output, ctx = run(world, RunRequest("2026-06", budget_cents=100 * 2900, customers=customers(200)))
    assert output["counts"]["charged"] == 100
    # The fake runs lane 0 (batches 0, 2, 4, 6: exactly the budget) before lane 1, whose first
    # batch meets the cap; that lane starts no further batch.
    assert output["counts"]["cap_exceeded"] == 25
    assert output["counts"]["skipped"] == 75 and output["skipped_by_reason"] == {"cap_exceeded": 75}
    assert output["spent_cents"] <= output["cap_cents"]
    assert len(batch_calls(ctx)) == 5  # no batch scheduled after the cap in that lane
    assert output["stopped"] == "cap_exceeded"


def test_an_item_refused_while_another_hold_was_pending_is_charged_by_the_recheck() -> None:
    # Lane 0 charges cus_0 (unpaid: held through the next 3 charges, then canceled) and cus_1;
    # lane 1's cus_3 is refused because of that hold. The cap leaves room for it afterwards.
    world = World(held=("cus_0", 3))
    output, ctx = run(world, RunRequest("2026-06", budget_cents=3 * 2900, customers=customers(4), max_parallel=4))
    assert output["counts"]["charged"] == 3 and output["counts"]["declined"] == 1
    assert output["stopped"] is None and output["spent_cents"] == 3 * 2900
    lanes = [c for c in ctx.calls if c.kind == "sub" and c.name == orch.LANE_ORCHESTRATOR]
    assert [c.instance_id for c in lanes] == ["run1:lane-0", "run1:lane-1", "run1:lane-2"]
    assert [[b["batch_no"] for b in c.input["batches"]] for c in lanes] == [[0], [1], [2]]  # the recheck: batch 2
    assert [b["batch"]["first_index"] for b in lanes[2].input["batches"]] == [3]
    rechecking = next(s for s in ctx.statuses if s.get("settled_lanes"))
    assert rechecking["lanes"] == ["run1:lane-2"] and rechecking["settled_lanes"] == ["run1:lane-0", "run1:lane-1"]
    keys = [ChargeRequest.from_dict(c.input).idempotency_key for c in ctx.activity_calls(orch.CHARGE_CUSTOMER)]
    assert keys.count("run1-3") == 2  # refused, then charged with the same idempotency key


def test_no_recheck_when_the_charges_themselves_filled_the_cap() -> None:
    output, ctx = run(World(), RunRequest("2026-06", budget_cents=3 * 2900, customers=customers(6), max_parallel=2))
    assert output["stopped"] == "cap_exceeded" and output["counts"]["charged"] == 3
    lanes = [c.instance_id for c in ctx.calls if c.kind == "sub" and c.name == orch.LANE_ORCHESTRATOR]
    assert lanes == ["run1:lane-0", "run1:lane-1"]


def test_a_declined_card_does_not_stop_the_run() -> None:
    world = World(declined=frozenset({"cus_7"}))
    output, _ = run(world, RunRequest("2026-06", budget_cents=10 * 2900, customers=customers(10)))
    assert output["counts"]["declined"] == 1 and output["counts"]["charged"] == 9
    assert [i["outcome"] for i in output["items"] if i["customer_id"] == "cus_7"] == ["declined"]


def test_revoked_mid_run_stops_scheduling_and_skips_with_revoked() -> None:
    world = World(revoke_after=30)
    output, _ = run(world, RunRequest("2026-06", budget_cents=200 * 2900, customers=customers(200)))
    assert output["counts"]["charged"] == 30
    # Lane 0's second batch (batch 2) saw the revoke after 5 charges; lane 1's first batch was
    # refused as well; neither lane started a batch after that.
    assert output["counts"]["revoked"] == 20 + 25
    assert output["skipped_by_reason"] == {"revoked": 125}


def test_a_batch_that_exhausts_retries_is_restarted_with_the_same_idempotency_keys() -> None:
    world = World(fail_times={3: 1})
    output, ctx = run(world, RunRequest("2026-06", budget_cents=10 * 2900, max_parallel=10, customers=customers(10)))
    assert output["counts"]["charged"] == 10
    subs = [c.instance_id for c in ctx.calls if c.kind == "timer" or c.name == orch.BATCH_ORCHESTRATOR]
    assert subs == ["run1:batch-0:1", None, "run1:batch-0:2", "run1:batch-1:1"]  # lane 0, then lane 1
    timer = next(c for c in ctx.calls if c.kind == "timer")
    assert timer.input == datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)  # replay-safe clock + 30 s
    # The restarted batch replayed its charged items instead of charging them again.
    assert len(world.charged) == 10


def test_a_batch_failing_every_attempt_is_reported_and_the_run_goes_on() -> None:
    world = World(fail_times={3: 99})
    output, ctx = run(world, RunRequest("2026-06", budget_cents=10 * 2900, max_parallel=10, customers=customers(10)))
    assert output["counts"]["transient_exhausted"] == 5
    assert len(batch_calls(ctx)) == 4 + 1  # every attempt of batch 0, then batch 1
    assert output["counts"]["charged"] == 5
    assert [i["outcome"] for i in output["items"][5:]] == ["charged"] * 5


def test_customers_by_query_use_a_read_only_key_and_the_fetched_list() -> None:
    people = [
        {"id": f"cus_{i}", "metadata": {"plan": "pro" if i % 2 else "free"}, "default_source": f"card_{i}"}
        for i in range(150)
    ]
    world = World(customers=people)
    request = RunRequest("2026-06", budget_cents=100_000, customer_query=CustomerQuery({"plan": "pro"}, 500))
    output, ctx = run(world, request)
    issue_calls = ctx.activity_calls(orch.ISSUE_KEY)
    assert [c.input["role"] for c in issue_calls] == ["charge", "customers"]
    assert issue_calls[1].input["allowed_endpoints"] == ["GET /v1/customers", "GET /v1/customers/*", "GET /v1/payment_methods"]
    assert output["counts"]["charged"] == 75
    assert output["key_ids"] == {"charge": "key0", "customers": "key1"}
    charged = {i["customer_id"] for i in output["items"]}
    assert charged == {f"cus_{i}" for i in range(1, 150, 2)}


def test_given_customers_without_cards_are_resolved_first_for_payment_intents_only() -> None:
    bare = tuple(ChargeItem(f"cus_{i}", 100) for i in range(3))
    world = World()
    world.fetch = lambda payload: {  # type: ignore[method-assign]
        "items": [dict(i, payment_method="card_x") for i in payload["items"]],
        "failure_code": None,
    }
    _, ctx = run(world, RunRequest("2026-06", budget_cents=1000, customers=bare), "r2")
    assert len(ctx.activity_calls(orch.FETCH_CUSTOMERS)) == 1
    world2 = World()
    _, ctx2 = run(world2, RunRequest("2026-06", budget_cents=1000, customers=bare, endpoint=Endpoint.CHARGES), "r3")
    assert ctx2.activity_calls(orch.FETCH_CUSTOMERS) == []
    assert ctx2.calls[0].input["allowed_endpoints"] == ["POST /v1/charges"]


def test_keys_are_revoked_even_when_the_run_fails() -> None:
    world = World()

    def broken_fetch(payload: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("proxy down for good")

    world.fetch = broken_fetch  # type: ignore[method-assign]
    request = RunRequest("2026-06", budget_cents=1000, customer_query=CustomerQuery({"plan": "pro"}, 100))
    with pytest.raises(RuntimeError, match="proxy down"):
        run(world, request)
    assert world.revoked_labels == [("azure-durable/run1", "azure-durable/run1/customers")]
    assert not any(k["active"] for k in world.keys.values())


def test_the_orchestrator_is_deterministic() -> None:
    request = RunRequest("2026-06", budget_cents=120 * 2900, max_parallel=40, customers=customers(130))
    out1, ctx1 = run(World(declined=frozenset({"cus_5"})), request)
    out2, ctx2 = run(World(declined=frozenset({"cus_5"})), request)
    assert out1 == out2
    assert [(c.kind, c.name, c.input, c.instance_id) for c in ctx1.calls] == [
        (c.kind, c.name, c.input, c.instance_id) for c in ctx2.calls
    ]
    assert ItemOutcome.SKIPPED.value in out1["counts"]


def test_batches_in_flight_never_exceed_max_parallel() -> None:
    from billing.plan import RunPlan

    for max_parallel, lanes, size in ((1, 1, 1), (2, 2, 1), (5, 2, 2), (50, 2, 25), (51, 2, 25)):
        plan = RunPlan("r", RunRequest("2026-06", budget_cents=100, max_parallel=max_parallel, customers=customers(3)))
        assert (plan.lanes, plan.batch_size) == (lanes, size)
        assert plan.lanes * plan.batch_size <= max_parallel


class StoppedWorld(World):
    """The run's labels were stopped before its keys were issued: the issue hands out no key."""

    def issue(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"key_id": None, "label": payload["label"], "cap_cents": 0, "stopped": True}


def test_a_run_stopped_before_its_key_charges_nobody_and_says_stopped() -> None:
    world = StoppedWorld()
    items = tuple(ChargeItem(f"cus_{i}", 100) for i in range(3))
    output, ctx = run(world, RunRequest("2026-06", 1000, customers=items))
    assert output["stopped"] == "stopped" and output["skipped_by_reason"] == {"stopped": 3}
    assert ctx.activity_calls(orch.CHARGE_CUSTOMER) == [] and ctx.activity_calls(orch.FETCH_CUSTOMERS) == []


def test_warnings_and_the_runs_purpose_reach_every_charge() -> None:
    world = World(customers=[{"id": f"cus_{i}", "metadata": {"plan": "pro"}, "default_source": "card_1"}
                             for i in range(2)])
    request = RunRequest("2026-06", 50, customer_query=CustomerQuery({"plan": "pro"}, 100), purpose="inv-7")
    output, ctx = run(world, request)
    assert [w["code"] for w in output["warnings"]] == ["budget_below_smallest_charge"]
    assert ctx.statuses[0]["warnings"] == output["warnings"]  # known from the body: warned from the start
    charges = [ChargeRequest.from_dict(c.input) for c in ctx.activity_calls(orch.CHARGE_CUSTOMER)]
    assert {c.item.purpose for c in charges} == {"inv-7"}
    nobody = RunRequest("2026-06", 5000, customer_query=CustomerQuery({"plan": "none"}, 100))
    assert [w["code"] for w in run(World(), nobody)[0]["warnings"]] == ["no_customers"]


def test_the_run_names_its_lanes_and_their_progress_adds_up() -> None:
    from billing.plan import merge_progress, progress

    world = World()
    _, ctx = run(world, RunRequest("2026-06", budget_cents=100 * 2900, customers=customers(100)))
    waiting = next(s for s in ctx.statuses if "lanes" in s)
    assert waiting["lanes"] == ["run1:lane-0", "run1:lane-1"]
    assert "lanes" not in ctx.statuses[-1]  # the final progress is the run's own
    lane0 = {"done": 25, "charged": 25, "counts": {"charged": 25}, "skipped_by_reason": {}, "spent_cents": 72500}
    lane1 = {"done": 25, "charged": 20, "counts": {"charged": 20, "revoked": 5}, "skipped_by_reason": {},
             "spent_cents": 58000, "stopped": "revoked"}
    merged = merge_progress(waiting, [lane0, lane1, None])
    assert merged == {**progress(100, [], 290000), "done": 50, "charged": 45, "spent_cents": 130500,
                      "counts": {"charged": 45, "revoked": 5}, "stopped": "revoked"}
