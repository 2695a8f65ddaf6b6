"""Paging billing runs for the console (plain function, no Durable host)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from console.runs import decode_continuation, page_runs, parse_limit
from core.errors import SpendgateError

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def status(i: int, name: str = "billing_run", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "instanceId": f"run-{i:04d}",
        "createdTime": T0 + timedelta(seconds=i // 2),  # pairs share a second: ties break on the id
        "lastUpdatedTime": T0 + timedelta(seconds=i),
        "runtimeStatus": "Running",
        "customStatus": {"done": i, "total": 10},
        **extra,
    }


def test_pages_cover_every_run_once_newest_first_and_skip_other_orchestrations() -> None:
    statuses = [status(i) for i in range(1000)] + [status(i, name="billing_batch") for i in range(50)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = page_runs(statuses, "billing_run", limit=100, continuation=token)
        seen += [r["instance_id"] for r in page["data"]]
        pages += 1
        token = page["continuation"]
        if token is None:
            break
    assert pages == 10
    assert seen == [f"run-{i:04d}" for i in range(999, -1, -1)]


def test_a_run_started_between_pages_does_not_shift_the_next_page() -> None:
    statuses = [status(i) for i in range(30)]
    first = page_runs(statuses, "billing_run", limit=10, continuation=None)
    statuses.append(status(500))  # newest of all
    second = page_runs(statuses, "billing_run", limit=10, continuation=first["continuation"])
    assert [r["instance_id"] for r in second["data"]] == [f"run-{i:04d}" for i in range(19, 9, -1)]


def test_rows_are_summaries_without_per_item_results() -> None:
    output = {"total": 2, "spent_cents": 500, "cap_cents": 1000, "items": [{"customer_id": "cus_1"}] * 2}
    row = page_runs([status(1, output=output)], "billing_run", limit=5, continuation=None)["data"][0]
    assert row["output"] == {"total": 2, "spent_cents": 500, "cap_cents": 1000}
    assert row["created_time"] == "2026-11-22T12:00:00.000000Z"
    assert row["progress"] == {"done": 1, "total": 10}
    assert row["runtime_status"] == "Running"


@pytest.mark.parametrize("raw", ["0", "101", "-1", "ten", "1.5"])
def test_bad_limit_is_a_clear_400(raw: str) -> None:
    with pytest.raises(SpendgateError) as err:
        parse_limit(raw)
    assert err.value.status == 400 and err.value.param == "limit"


def test_limit_defaults_and_bounds() -> None:
    assert parse_limit(None) == 25
    assert parse_limit("") == 25
    assert parse_limit("100") == 100


@pytest.mark.parametrize("token", ["not-a-token", "W10", "e30", "!!!"])
def test_bad_continuation_is_a_clear_400(token: str) -> None:
    with pytest.raises(SpendgateError) as err:
        decode_continuation(token)
    assert err.value.status == 400 and err.value.param == "continuation"
