"""Paging billing runs for the console: the index (Azurite) and the page built from it (no Durable host)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.run_index import IndexedRun, RunIndex, decode_continuation
from console.runs import fetch_page, parse_limit
from core.errors import SpendgateError
from core.storage import table_service_from_connection_string
from devhost.services import Service

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["0", "101", "-1", "ten", "1.5"])
def test_bad_limit_is_a_clear_400(raw: str) -> None:
    with pytest.raises(SpendgateError) as err:
        parse_limit(raw)
    assert err.value.status == 400 and err.value.param == "limit"


def test_limit_defaults_and_bounds() -> None:
    assert parse_limit(None) == 25
    assert parse_limit("") == 25
    assert parse_limit("100") == 100


@pytest.mark.parametrize("token", ["not-a-token", "!!!", "e30x", "e30", "W10", "eyJhIjogMX0"])
def test_bad_continuation_is_a_clear_400(token: str) -> None:
    with pytest.raises(SpendgateError) as err:
        decode_continuation(token)
    assert err.value.status == 400 and err.value.param == "continuation"


class FakeIndex:
    def __init__(self, runs: list[IndexedRun]) -> None:
        self.runs = runs

    def page(self, *, limit: int, continuation: str | None) -> tuple[list[IndexedRun], str | None]:
        start = int(continuation or 0)
        rest = self.runs[start : start + limit]
        return rest, (str(start + limit) if start + limit < len(self.runs) else None)


class FakeStatuses:
    """`get_status` as the SDK answers it: an unknown id comes back with no runtime status."""

    def __init__(self, known: dict[str, dict[str, Any]]) -> None:
        self.known = known

    async def get_status(self, instance_id: str) -> dict[str, Any]:
        return self.known.get(instance_id, {"instanceId": instance_id, "runtimeStatus": None})


def status(instance_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": "billing_run", "instanceId": instance_id, "createdTime": T0, "lastUpdatedTime": T0,
            "runtimeStatus": "Running", "customStatus": {"done": 1, "total": 10}, **extra}


def test_a_page_keeps_the_index_order_drops_runs_that_never_started_and_shows_summaries() -> None:
    output = {"total": 2, "spent_cents": 500, "cap_cents": 1000, "items": [{"customer_id": "cus_1"}] * 2}
    index = FakeIndex([IndexedRun("new", T0), IndexedRun("never-started", T0), IndexedRun("old", T0)])
    client = FakeStatuses({"new": status("new", output=output), "old": status("old")})
    page = asyncio.run(fetch_page(client, index, dict, limit=3, continuation=None))
    assert [r["instance_id"] for r in page["data"]] == ["new", "old"] and page["continuation"] is None
    row = page["data"][0]
    assert row["output"] == {"total": 2, "spent_cents": 500, "cap_cents": 1000}
    assert row["created_time"] == "2026-11-22T12:00:00.000000Z"
    assert row["progress"] == {"done": 1, "total": 10} and row["runtime_status"] == "Running"


@pytest.mark.integration
def test_the_index_pages_newest_first_and_new_runs_never_shift_the_next_page(azurite: Service) -> None:
    tables = table_service_from_connection_string(azurite.extra["connection_string"])
    index = RunIndex(tables, "sgidx" + uuid.uuid4().hex[:8])
    assert index.page(limit=10, continuation=None) == ([], None)  # no table yet: nothing listed
    for i in range(250):
        index.record(f"run-{i:03d}", T0 + timedelta(seconds=i))
    seen, token, pages = [], None, 0
    while True:
        runs, token = index.page(limit=40, continuation=token)
        seen += [r.instance_id for r in runs]
        pages += 1
        if pages == 1:
            index.record("run-late", T0 + timedelta(days=1))  # newest of all, started while paging
        if token is None:
            break
    assert seen == [f"run-{i:03d}" for i in range(249, -1, -1)] and pages == 7
    assert index.page(limit=1, continuation=None)[0][0].instance_id == "run-late"
