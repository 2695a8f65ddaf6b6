"""Listing billing runs a page at a time, for the console.

The Durable client answers "all instances" in one list (sub-orchestrations and other
orchestrators included), so this module keeps only the billing runs, orders them newest
first and cuts a page. The continuation token is the position of the last row shown
(created time + instance id), not an offset, so runs started meanwhile never shift or
repeat rows on the next page. Rows are summaries: per-item results stay with
`GET /api/billing/runs/{id}`, so a page of 1,000-customer runs stays small.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

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
