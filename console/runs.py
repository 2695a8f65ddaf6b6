"""Listing billing runs a page at a time, for the console.

The Durable client answers instance queries in one list (sub-orchestrations, other
orchestrators and every output included), so `fetch_page` asks only for a window of
creation times that holds the page (widening it from the last hour until it does) and
`page_runs` keeps the billing runs, orders them newest first and cuts the page. With
1,000 runs a page therefore reads about the runs it shows, not the whole task hub. The continuation token is the position of the last row shown
(created time + instance id), not an offset, so runs started meanwhile never shift or
repeat rows on the next page. Rows are summaries: per-item results stay with
`GET /api/billing/runs/{id}`, so a page of 1,000-customer runs stays small.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from core.errors import SpendgateError

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
FIRST_WINDOW = timedelta(hours=1)
WIDEST_WINDOW = timedelta(days=400)  # past this, one unbounded query (few runs exist at all)
# Output fields worth a row in a list (everything but the per-item results).
_SUMMARY_FIELDS = ("label", "total", "counts", "skipped_by_reason", "spent_cents", "cap_cents", "stopped", "billing_period")


def parse_limit(raw: str | None) -> int:
    """The page size asked for, within 1..MAX_LIMIT; a bad value is the caller's mistake."""
    if raw in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(str(raw))
    except ValueError:
        raise SpendgateError("policy_invalid", "limit must be an integer from 1 to 100.", param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise SpendgateError("policy_invalid", "limit must be an integer from 1 to 100.", param="limit")
    return limit


def encode_continuation(created: str, instance_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, instance_id]).encode()).decode().rstrip("=")


def decode_continuation(token: str | None) -> tuple[str, str] | None:
    """The (created, instance id) position a token stands for; a bad token is a 400."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, instance_id = json.loads(raw)
        if isinstance(created, str) and isinstance(instance_id, str):
            return created, instance_id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise SpendgateError("policy_invalid", "continuation is not a token from a previous page.", param="continuation")


def _iso(value: Any) -> str:
    """UTC ISO-8601 with a fixed width, so rows sort correctly as text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value or "")


def _status_name(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def run_row(status: Mapping[str, Any]) -> dict[str, Any]:
    """One list row from an orchestration status (a dict with the SDK's camelCase names)."""
    output = status.get("output")
    summary = {k: output[k] for k in _SUMMARY_FIELDS if k in output} if isinstance(output, Mapping) else None
    return {
        "instance_id": status.get("instanceId"),
        "name": status.get("name"),
        "runtime_status": _status_name(status.get("runtimeStatus")),
        "created_time": _iso(status.get("createdTime")),
        "last_updated_time": _iso(status.get("lastUpdatedTime")),
        "progress": status.get("customStatus"),
        "output": summary,
    }


def page_runs(
    statuses: Iterable[Mapping[str, Any]], orchestrator: str, *, limit: int, continuation: str | None
) -> dict[str, Any]:
    """A page of runs of `orchestrator`, newest first: `{"data": [...], "continuation": str|None}`."""
    after = decode_continuation(continuation)
    rows = [run_row(s) for s in statuses if s.get("name") == orchestrator]
    rows.sort(key=lambda r: (r["created_time"], r["instance_id"] or ""), reverse=True)
    if after is not None:
        rows = [r for r in rows if (r["created_time"], r["instance_id"] or "") < after]
    page = rows[:limit]
    token = None
    if len(rows) > limit:
        last = page[-1]
        token = encode_continuation(last["created_time"], last["instance_id"] or "")
    return {"data": page, "continuation": token}


class InstanceQueries(Protocol):
    """The part of the Durable client used here (`DurableOrchestrationClient`)."""

    def get_status_by(
        self, created_time_from: datetime | None = None, created_time_to: datetime | None = None
    ) -> Awaitable[list[Any]]: ...

    def get_status_all(self) -> Awaitable[list[Any]]: ...


async def fetch_page(
    client: InstanceQueries,
    orchestrator: str,
    to_dict: Callable[[Any], Mapping[str, Any]],
    *,
    limit: int,
    continuation: str | None,
    now: datetime,
) -> dict[str, Any]:
    """A page of runs, querying only as far back in creation time as the page needs."""
    after = decode_continuation(continuation)
    # Created times come back to the second: the window's end includes the whole second.
    end = (datetime.fromisoformat(after[0].replace("Z", "+00:00")) if after else now) + timedelta(seconds=1)
    end = end.astimezone(UTC).replace(tzinfo=None)
    window = FIRST_WINDOW
    while True:
        if window > WIDEST_WINDOW:
            statuses = [to_dict(s) for s in await client.get_status_all()]
        else:
            found = await client.get_status_by(created_time_from=end - window, created_time_to=end)
            statuses = [to_dict(s) for s in found]
        page = page_runs(statuses, orchestrator, limit=limit, continuation=continuation)
        # A full page plus one more run proves the window held everything this page needs.
        if page["continuation"] is not None or window > WIDEST_WINDOW:
            return page
        window *= 8
