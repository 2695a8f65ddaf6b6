"""Listing held-charge approvals without scanning: a pending index, a decided index, and their retention.

The approvals table (`<prefix>approvals`, proxy/approvals.py) keeps each approval in partition
`approval` under its id, which the gate reads with one point read. Ids are hashes, so that
partition has no useful order; two more partitions of the same table list approvals:

    PartitionKey pending   RowKey <approval id>
        the approval's view (`Approval.view` fields) while nobody decided it; `alerted` once the
        sweeper saw its `approval_requested` alert recorded. Listing what waits is one query of
        this partition (less those past `expires_at`): decided approvals are never read.
    PartitionKey decided   RowKey <10^14 - decision ms, 14 digits>-<approval id>
        the view with its final `state` (approved | rejected | expired) and `decided_at` (for an
        expired one: its `expires_at`). Newest decision first, so a page is one range query
        (`RowKey gt <the cursor's row>`), and the rows past the retention are one range at the end.

Writes, none on a charge's path (only a held charge, a decision, and the sweeper write here):
- the gate creates the pending row *before* the approval row (`create`; whoever then wins the
  approval row's create rewrites the pending row with its own view if it lost the first create);
- `decide` replaces the approval row (If-Match), then upserts the decided row, then deletes the
  pending row;
- the alert sweeper (alerts/sweeper.py, every minute) repairs what a crash left between those
  steps: a pending row whose approval is decided or expired is moved to `decided`, one whose
  approval row was never created is dropped; and it deletes decided approvals (both rows) once
  their decision is older than `retention`.

Pagination is Stripe's: `limit` (1-100, default 20), `starting_after` (an approval id: the page
continues after it in the list's order) and `has_more`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient

PENDING = "pending"
DECIDED = "decided"
RETENTION_DAYS = 90  # why this figure: docs/approvals.md, "Listing and retention"
_INVERT_MS = 10**14
_VIEW = ("id", "key_id", "label", "method", "path", "amount_cents", "currency", "customer", "state", "created_at",
         "expires_at", "decided_by", "decided_at", "reason")
log = logging.getLogger("spendgate.approvals")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decided_row(view: dict[str, Any]) -> str:
    """The decided index's RowKey: newest decision first (an expired approval counts at its expiry)."""
    at = view.get("decided_at") or view["expires_at"]
    return f"{_INVERT_MS - int(_dt(at).timestamp() * 1000):014d}-{view['id']}"


def _entity(partition: str, row: str, view: dict[str, Any]) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": row, **{k: ("" if view.get(k) is None else view[k]) for k in _VIEW}}


def _view(e: Any) -> dict[str, Any]:
    out = {"object": "approval", **{k: (e.get(k) if e.get(k) not in ("", None) else None) for k in _VIEW}}
    out["amount_cents"] = int(out["amount_cents"] or 0)
    out["currency"] = out["currency"] or "usd"
    return out


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool

    def body(self) -> dict[str, Any]:
        return {"object": "list", "data": self.data, "has_more": self.has_more, "url": "/api/approvals"}


class ApprovalIndex:
    """The `pending` and `decided` partitions of the approvals table (module doc)."""

    def __init__(self, table: TableClient, retention: timedelta = timedelta(days=RETENTION_DAYS)) -> None:
        self.table = table
        self.retention = retention

    # --- writes --------------------------------------------------------------------------
    def add_pending(self, view: dict[str, Any], *, overwrite: bool = False) -> bool:
        """Create (or with `overwrite`, rewrite) the pending row; False when it existed already."""
        entity = _entity(PENDING, view["id"], view)
        if overwrite:
            self.table.upsert_entity(entity)
            return True
        try:
            self.table.create_entity(entity)
        except ResourceExistsError:
            return False
        return True

    def record_decided(self, view: dict[str, Any]) -> None:
        """The approval is decided (or expired): into `decided`, out of `pending`."""
        self.table.upsert_entity(_entity(DECIDED, decided_row(view), view))
        with contextlib.suppress(ResourceNotFoundError):
            self.table.delete_entity(PENDING, view["id"])

    # --- listing -------------------------------------------------------------------------
    def pending_rows(self) -> list[Any]:
        """The pending partition: one query, only approvals that wait (or expired, until the sweeper moves them)."""
        try:
            return list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": PENDING}))
        except ResourceNotFoundError:
            return []

    def list_pending(self, now: datetime, limit: int, after: dict[str, Any] | None) -> Page:
        """What waits, newest first (`after`: the view of `starting_after`); expired ones are left out."""
        waiting = (_view(e) for e in self.pending_rows() if _dt(e["expires_at"]) > now)
        views = sorted(waiting, key=lambda v: (v["created_at"], v["id"]), reverse=True)
        if after is not None:
            cursor = (after["created_at"], after["id"])
            views = [v for v in views if (v["created_at"], v["id"]) < cursor]
        return Page(views[:limit], len(views) > limit)

    def list_decided(self, state: str | None, limit: int, after: dict[str, Any] | None) -> Page:
        """Decided approvals (of one state, or all), newest decision first: one range query."""
        flt, params = "PartitionKey eq @pk", {"pk": DECIDED}
        if after is not None:
            flt += " and RowKey gt @after"
            params["after"] = decided_row(after)
        if state is not None:
            flt += " and state eq @state"
            params["state"] = state
        try:
            rows = list(islice(self.table.query_entities(flt, parameters=params, results_per_page=limit + 1),
                               limit + 1))
        except ResourceNotFoundError:
            return Page([], False)
        return Page([_view(e) for e in rows[:limit]], len(rows) > limit)

    # --- upkeep (the sweeper) ------------------------------------------------------------
    def stale_decided(self, now: datetime, cap: int = 500) -> Iterator[tuple[str, str]]:
        """(approval id, decided RowKey) of decisions older than the retention: the end of the partition."""
        cutoff = f"{_INVERT_MS - int((now - self.retention).timestamp() * 1000):014d}"
        flt = "PartitionKey eq @pk and RowKey gt @cutoff"
        try:
            for e in islice(self.table.query_entities(flt, parameters={"pk": DECIDED, "cutoff": cutoff},
                                                      select=["RowKey", "id"]), cap):
                yield str(e["id"]), str(e["RowKey"])
        except ResourceNotFoundError:
            return

    def forget(self, approval_id: str, decided_key: str, approval_partition: str) -> None:
        """Delete a decided approval past the retention: its approval row first, then its index row."""
        for pk, rk in ((approval_partition, approval_id), (DECIDED, decided_key)):
            with contextlib.suppress(ResourceNotFoundError):
                self.table.delete_entity(pk, rk)

    def drop_pending(self, approval_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.table.delete_entity(PENDING, approval_id)

    def mark_alerted(self, approval_id: str) -> None:
        with contextlib.suppress(AzureError):
            self.table.update_entity({"PartitionKey": PENDING, "RowKey": approval_id, "alerted": True})
