"""Listing billing runs a page at a time, for the console.

Runs come from the runs index (`billing.run_index`), newest first, one Table Storage page
at a time; each run on the page then gets one status read from the Durable client, in
parallel. Not from the Durable client's instance query: on Azure that is one GET answering
the extension's first page of 100 instances in instance-id order, batch sub-orchestrations
included, and the SDK drops the continuation, so newer runs would silently vanish. The
continuation token is the index's own (a position, not an offset), so runs started
meanwhile never shift or repeat rows on the next page. A page can hold fewer rows than
asked for when an indexed run was never started (its start failed after the index row was
written). Rows are summaries: per-item results stay with `GET /api/billing/runs/{id}`, so a
page of 1,000-customer runs stays small. The blocking index read runs off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from billing.run_index import RunIndex
from core.errors import SpendgateError

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
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


class StatusReader(Protocol):
    """The part of the Durable client used here (`DurableOrchestrationClient.get_status`)."""

    def get_status(self, instance_id: str) -> Awaitable[Any]: ...


async def fetch_page(
    client: StatusReader,
    index: RunIndex,
    to_dict: Callable[[Any], Mapping[str, Any]],
    *,
    limit: int,
    continuation: str | None,
) -> dict[str, Any]:
    """A page of runs, newest first: `{"data": [...], "continuation": str|None}`."""
    indexed, token = await asyncio.to_thread(index.page, limit=limit, continuation=continuation)
    statuses = await asyncio.gather(*(client.get_status(run.instance_id) for run in indexed))
    rows = []
    for status in statuses:
        row = to_dict(status)
        if row.get("runtimeStatus"):  # an indexed run whose start failed is unknown to Durable
            rows.append(run_row(row))
    return {"data": rows, "continuation": token}
