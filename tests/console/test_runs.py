"""Paging billing runs for the console (plain function, no Durable host)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from console.runs import decode_continuation, fetch_page, page_runs, parse_limit
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


class FakeInstances:
    """A Durable client's instance queries over a fixed list of statuses (filters as the host does)."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = statuses
        self.returned = 0  # how many statuses all queries together handed back

    async def get_status_by(self, created_time_from: datetime | None = None,
                            created_time_to: datetime | None = None) -> list[dict[str, Any]]:
        lo = created_time_from.replace(tzinfo=UTC) if created_time_from else None
        hi = created_time_to.replace(tzinfo=UTC) if created_time_to else None
        found = [s for s in self.statuses if (lo is None or s["createdTime"] >= lo) and (hi is None or s["createdTime"] <= hi)]
        self.returned += len(found)
        return found

    async def get_status_all(self) -> list[dict[str, Any]]:
        self.returned += len(self.statuses)
        return list(self.statuses)


def spread(n: int, every: timedelta, name: str = "billing_run") -> list[dict[str, Any]]:
    now = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
    return [{**status(i, name=name), "createdTime": now - every * i} for i in range(n)]


def all_pages(client: FakeInstances, limit: int) -> list[str]:
    seen: list[str] = []
    token = None
    now = datetime(2026, 11, 22, 23, 0, 30, tzinfo=UTC)
    while True:
        page = asyncio.run(fetch_page(client, "billing_run", dict, limit=limit, continuation=token, now=now))
        seen += [r["instance_id"] for r in page["data"]]
        token = page["continuation"]
        if token is None:
            return seen


def test_a_page_of_1000_recent_runs_reads_about_one_page_not_the_hub() -> None:
    client = FakeInstances(spread(1000, timedelta(seconds=30)) + spread(3000, timedelta(seconds=10), "billing_batch"))
    first = asyncio.run(fetch_page(client, "billing_run", dict, limit=25, continuation=None,
                                   now=datetime(2026, 11, 22, 23, 0, 30, tzinfo=UTC)))
    assert [r["instance_id"] for r in first["data"]] == [f"run-{i:04d}" for i in range(25)]
    assert client.returned < 600  # one hour of runs and batches, not all 4,000 instances


def test_paging_through_runs_spread_over_months_sees_each_once() -> None:
    client = FakeInstances(spread(300, timedelta(hours=7)))
    assert all_pages(client, 40) == [f"run-{i:04d}" for i in range(300)]


def test_few_old_runs_are_still_found() -> None:
    client = FakeInstances(spread(3, timedelta(days=300)))
    assert all_pages(client, 25) == ["run-0000", "run-0001", "run-0002"]
