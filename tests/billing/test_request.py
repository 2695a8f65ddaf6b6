"""Validation of `POST /api/billing/runs` bodies: clear 400s naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from billing.payloads import ChargeItem, CustomerQuery, Endpoint, RunRequest
from billing.request import parse_run_request
from core.errors import SpendgateError

GOOD: dict[str, Any] = {
    "billing_period": "2026-06",
    "customers": [{"customer_id": "cus_1", "amount_cents": 2900}],
    "budget_usd": 58,
}


def test_defaults_and_round_trip() -> None:
    run, instance_id = parse_run_request(GOOD)
    assert instance_id is None
    assert run == RunRequest("2026-06", 5800, 50, "2h", Endpoint.PAYMENT_INTENTS, (ChargeItem("cus_1", 2900),), None)
    assert RunRequest.from_dict(run.to_dict()) == run


def test_query_endpoint_and_instance_id() -> None:
    body = {
        "billing_period": "2026-12",
        "customer_query": {"metadata": {"plan": "pro"}, "amount_cents": 2900},
        "budget_usd": "2900.50",
        "endpoint": "charges",
        "max_parallel": 10,
        "expires_in": "30m",
        "instance_id": "june-run_1",
    }
    run, instance_id = parse_run_request(body)
    assert instance_id == "june-run_1"
    assert run.customer_query == CustomerQuery({"plan": "pro"}, 2900)
    assert (run.budget_cents, run.endpoint, run.max_parallel, run.expires_in) == (290050, Endpoint.CHARGES, 10, "30m")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"billing_period": None}, "billing_period"),
        ({"billing_period": "2026-13"}, "billing_period"),
        ({"budget_usd": None}, "budget_usd"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"budget_usd": "1.234"}, "budget_usd"),
        ({"budget_usd": True}, "budget_usd"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"max_parallel": 501}, "max_parallel"),
        ({"max_parallel": "5"}, "max_parallel"),
        ({"expires_in": "2 weeks"}, "expires_in"),
        ({"expires_in": "3d"}, "expires_in"),
        ({"endpoint": "refunds"}, "endpoint"),
        ({"instance_id": "a/b"}, "instance_id"),
        ({"customers": []}, "customers"),
        ({"customers": [{"customer_id": "cus_1"}]}, "customers[0][amount_cents]"),
        ({"customers": [{"customer_id": "cus 1", "amount_cents": 1}]}, "customers[0][customer_id]"),
        ({"customers": [{"customer_id": "cus_1", "amount_cents": 1, "x": 1}]}, "customers[0][x]"),
        ({"customers": None, "customer_query": {"metadata": {}, "amount_cents": 1}}, "customer_query[metadata]"),
        ({"customers": None, "customer_query": {"metadata": {"plan": "pro"}}}, "customer_query[amount_cents]"),
        ({"customer_query": {"metadata": {"plan": "pro"}, "amount_cents": 1}}, "customers"),
        ({"customers": None}, "customers"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_bodies_name_the_field(change: dict[str, Any], param: str) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(SpendgateError) as err:
        parse_run_request(body)
    assert err.value.code == "policy_invalid"
    assert err.value.status == 400
    assert err.value.param == param


def test_a_non_object_body_is_rejected() -> None:
    with pytest.raises(SpendgateError) as err:
        parse_run_request([1, 2])
    assert err.value.code == "body_invalid"


def test_a_customer_listed_twice_for_one_identity_is_refused_naming_the_indexes() -> None:
    twice = [{"customer_id": c, "amount_cents": 100} for c in ("cus_1", "cus_2", "cus_1", "cus_1")]
    with pytest.raises(SpendgateError) as err:
        parse_run_request({**GOOD, "customers": twice})
    assert (err.value.code, err.value.status, err.value.param) == ("duplicate_customers", 400, "customers[2][customer_id]")
    assert "cus_1 at indexes 0, 2, 3" in err.value.message
    for n, purpose in enumerate(("inv-1", "inv-2", "inv-3")):
        twice[[0, 2, 3][n]]["purpose"] = purpose
    run, _ = parse_run_request({**GOOD, "customers": twice})
    assert [c.purpose for c in run.customers or ()] == ["inv-1", None, "inv-2", "inv-3"]
    with pytest.raises(SpendgateError) as err:  # a run-wide purpose does not tell two entries apart
        parse_run_request({**GOOD, "purpose": "june", "customers": [twice[1], twice[1]]})
    assert err.value.code == "duplicate_customers"
    with pytest.raises(SpendgateError) as err:
        parse_run_request({**GOOD, "purpose": "no spaces allowed"})
    assert err.value.param == "purpose"
