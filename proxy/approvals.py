"""Charges held for a person: a key's `approval_above_usd`, pending approvals, approve / reject.

A metered charge priced from its own body (`POST /v1/payment_intents`, `POST /v1/charges`) on a
key with `approval_above_usd` and an amount above it is not forwarded; nor is a confirm or capture
of a payment intent whose amount (priced from Stripe, proxy/pricing.py) is above it. `gate` answers
`402 approval_required` naming an approval, and records the request as a pending approval:

    table <prefix>approvals, PartitionKey "approval", RowKey = approval id
    apr_<sha256(key id, idempotency key)[:32]>: key_id, label, idempotency_key, fingerprint, method,
    path, amount_cents, customer, state (pending | approved | rejected), created_at, expires_at,
    decided_by, decided_at, reason

(and in the `pending` / `decided` partitions of the same table, which list them:
proxy/approval_index.py).

The id is derived from (key, idempotency key), so a repeat of the request (a retry, a concurrent
duplicate, the agent asking again) finds the same approval with one point read, and concurrent
first requests create one row (a create; storage refuses the second). Once a person approves it
(`decide`, If-Match on the pending row: a second decision answers 409 `approval_not_pending`),
the *same* request — same idempotency key, same parameters (fingerprint) — passes the gate and
goes through the proxy's ordinary pipeline: it reserves against the cap (approval never raises
it) and is forwarded exactly once, because the proxy's idempotency record for that key is
created in the reservation's transaction and every later repeat replays it. A different body
under the key answers `idempotency_error`; a rejected one `approval_rejected`; one nobody decided
before `expires_at` (`SPENDGATE_APPROVAL_TIMEOUT`) `approval_expired`. All three are 402/400
with `Stripe-Should-Retry: false` and change nothing.

Not gated: refunds, which return money.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from core.errors import SpendgateError
from core.settings import Settings
from proxy.approval_index import RETENTION_DAYS, ApprovalIndex, Page
from proxy.keys import parse_vault_key, secret_matches

PARTITION = "approval"
PRINCIPAL_HEADER = "x-ms-client-principal-name"  # set by App Service Authentication (Easy Auth)
MAX_REASON = 500
log = logging.getLogger("spendgate.approvals")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def approval_id(key_id: str, idempotency_key: str) -> str:
    return "apr_" + hashlib.sha256(f"{key_id}\n{idempotency_key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Approval:
    id: str
    key_id: str
    label: str
    idempotency_key: str
    fingerprint: str
    method: str
    path: str
    amount_cents: int
    customer: str | None
    state: str
    created_at: str
    expires_at: str
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None
    etag: str | None = None

    def state_at(self, now: datetime) -> str:
        """`pending` turns into `expired` once nobody decided before `expires_at`."""
        return "expired" if self.state == "pending" and now >= _dt(self.expires_at) else self.state

    def view(self, now: datetime) -> dict[str, Any]:
        """What the API shows (the idempotency key and fingerprint stay internal)."""
        return {"id": self.id, "object": "approval", "key_id": self.key_id, "label": self.label,
                "method": self.method, "path": self.path, "amount_cents": self.amount_cents, "currency": "usd",
                "customer": self.customer, "state": self.state_at(now), "created_at": self.created_at,
                "expires_at": self.expires_at, "decided_by": self.decided_by, "decided_at": self.decided_at,
                "reason": self.reason}


class ApprovalHeld(SpendgateError):
    """A 402 (or 400) about an approval: the body names it in `error.approval`."""

    def __init__(self, code: str, approval: Approval, message: str, *, created: bool = False) -> None:
        super().__init__(code, message)
        self.approval = approval
        self.created = created  # this request created the approval (the caller raises the alert)

    def body(self) -> dict[str, Any]:  # type: ignore[override]
        out: dict[str, Any] = super().body()
        out["error"]["approval"] = self.approval.id
        return out

    def to_json(self) -> str:
        return json.dumps(self.body())


class NotPending(SpendgateError):
    """`409 approval_not_pending` with the approval as it is."""

    def __init__(self, approval: Mapping[str, Any]) -> None:
        super().__init__("approval_not_pending", f"approval {approval['id']} is {approval['state']}, not pending")
        self.state = dict(approval)

    def body(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().body(), "approval": self.state}

    def to_json(self) -> str:
        return json.dumps(self.body())


def _entity(a: Approval) -> dict[str, Any]:
    return {"PartitionKey": PARTITION, "RowKey": a.id, "key_id": a.key_id, "label": a.label,
            "idempotency_key": a.idempotency_key, "fingerprint": a.fingerprint, "method": a.method, "path": a.path,
            "amount_cents": a.amount_cents, "customer": a.customer or "", "state": a.state,
            "created_at": a.created_at, "expires_at": a.expires_at, "decided_by": a.decided_by or "",
            "decided_at": a.decided_at or "", "reason": a.reason or ""}


def _from(e: Any) -> Approval:
    return Approval(e["RowKey"], e["key_id"], e["label"], e["idempotency_key"], e["fingerprint"], e["method"],
                    e["path"], int(e["amount_cents"]), e.get("customer") or None, e["state"], e["created_at"],
                    e["expires_at"], e.get("decided_by") or None, e.get("decided_at") or None,
                    e.get("reason") or None, e.metadata.get("etag"))


class ChargeApprovals:
    """The approvals table (module doc); storage errors surface as `governance_unavailable` in the proxy."""

    def __init__(self, tables: TableServiceClient, settings: Settings) -> None:
        self.name = f"{settings.table_prefix}approvals"
        self._tables = tables
        self._settings = settings

    @property
    def ttl(self) -> timedelta:
        """How long a held charge waits (read when a charge is held: a bad setting fails that charge only)."""
        return self._settings.approval_timeout

    @property
    def table(self) -> TableClient:
        return self._tables.get_table_client(self.name)

    def get(self, approval: str) -> Approval | None:
        if not approval.startswith("apr_") or len(approval) != 36 or not approval[4:].isalnum():
            return None
        try:
            return _from(self.table.get_entity(PARTITION, approval))
        except ResourceNotFoundError:
            return None

    @property
    def index(self) -> ApprovalIndex:
        """The pending / decided listing partitions (proxy/approval_index.py); decisions are kept at least
        `RETENTION_DAYS`, and always longer than the proxy's idempotency records."""
        days = max(RETENTION_DAYS, self._settings.idempotency_retention_days + 1)
        return ApprovalIndex(self.table, timedelta(days=days))

    def gate(self, key_id: str, label: str, method: str, path: str, fingerprint: str, amount_cents: int,
             customer: str | None, idempotency_key: str, now: datetime) -> Approval | None:
        """None when this very request was approved; else raises `ApprovalHeld` (its `created` says
        whether this request created the approval: the caller then raises the alert)."""
        found = self.get(approval_id(key_id, idempotency_key))
        if found is None:
            fresh = Approval(approval_id(key_id, idempotency_key), key_id, label, idempotency_key, fingerprint, method,
                             path, amount_cents, customer, "pending", _iso(now), _iso(now + self.ttl))
            # the pending index first: a crash after it leaves an orphan the sweeper drops, never an
            # approval nobody can list
            indexed = self._ensure_table(lambda: self.index.add_pending(fresh.view(now)))
            try:
                self._create(_entity(fresh))
            except ResourceExistsError:  # a concurrent duplicate created it first
                found = self.get(fresh.id)
            else:
                if not indexed:  # a concurrent duplicate wrote the index row with its view: ours won
                    self.index.add_pending(fresh.view(now), overwrite=True)
                raise ApprovalHeld("approval_required", fresh, _held_message(fresh, created=True), created=True)
        assert found is not None
        if found.fingerprint != fingerprint:
            raise SpendgateError(
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                param="Idempotency-Key",
            )
        state = found.state_at(now)
        if state == "approved":
            return None
        if state == "rejected":
            raise ApprovalHeld("approval_rejected", found, f"Approval {found.id} was rejected by {found.decided_by}"
                               f"{': ' + found.reason if found.reason else ''}. Nothing was forwarded.")
        if state == "expired":
            raise ApprovalHeld("approval_expired", found, f"Approval {found.id} expired at {found.expires_at} "
                               "without a decision. Nothing was forwarded; ask again with a new Idempotency-Key.")
        raise ApprovalHeld("approval_required", found, _held_message(found, created=False))

    def _create(self, entity: dict[str, Any]) -> None:
        self._ensure_table(lambda: self.table.create_entity(entity))

    def _ensure_table[T](self, call: Callable[[], T]) -> T:
        try:
            return call()
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self._tables.create_table(self.name)
            return call()

    def decide(self, approval: str, decision: str, who: str, reason: str | None, now: datetime) -> dict[str, Any]:
        """Approve or reject a pending approval, once (If-Match); `NotPending` otherwise."""
        found = self.get(approval)
        if found is None:
            raise SpendgateError("not_found", f"no approval {approval[:40]!r}", param="id")
        if found.state_at(now) != "pending":
            raise NotPending(found.view(now))
        decided = replace(found, state=decision, decided_by=who, decided_at=_iso(now), reason=reason)
        try:
            self.table.update_entity(_entity(decided), mode=UpdateMode.REPLACE, etag=found.etag,
                                     match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:  # someone decided between our read and write
            now_there = self.get(approval)
            raise NotPending((now_there or found).view(now)) from None
        try:  # the decision stands; the listing catches up here, or in the sweeper after a failure
            self.index.record_decided(decided.view(now))
        except AzureError as exc:
            log.warning("approval %s decided but not re-indexed (the sweeper will): %s", approval, type(exc).__name__)
        return decided.view(now)

    def list(self, state: str, now: datetime, limit: int = 20, starting_after: str | None = None) -> dict[str, Any]:
        """A page of approvals (`pending`: newest first; decided states: newest decision first; `all`: what
        waits, then what was decided), Stripe's list object (`data`, `has_more`)."""
        after = None
        if starting_after:
            cursor = self.get(starting_after)
            if cursor is None:
                raise SpendgateError("policy_invalid", f"no approval {starting_after[:40]!r}", param="starting_after")
            after = cursor.view(now)
        if state == "pending":
            return self.index.list_pending(now, limit, after).body()
        if state != "all":
            return self.index.list_decided(state, limit, after).body()
        if after is None or after["state"] == "pending":
            waiting = self.index.list_pending(now, limit, after)
            if waiting.has_more:
                return waiting.body()
            rest = self.index.list_decided(None, limit - len(waiting.data), None)
            return Page(waiting.data + rest.data, rest.has_more).body()
        return self.index.list_decided(None, limit, after).body()

    def sweep(self, now: datetime, grace: timedelta) -> dict[str, int]:
        """Upkeep of the listing (the alert sweeper's timer): move pending rows whose approval was decided
        or expired to `decided`, drop orphans, delete decisions past the retention."""
        index, moved, dropped, forgotten = self.index, 0, 0, 0
        for row in index.pending_rows():
            if now - _dt(row["created_at"]) < grace:
                continue  # its gate or decision may still be writing
            found = self.get(row["RowKey"])
            if found is None:
                index.drop_pending(row["RowKey"])
                dropped += 1
            elif found.state_at(now) != "pending":
                index.record_decided(found.view(now))
                moved += 1
        for approval, decided_key in list(index.stale_decided(now)):
            index.forget(approval, decided_key, PARTITION)
            forgotten += 1
        return {"moved": moved, "dropped": dropped, "forgotten": forgotten}


def view_for_key(
    approvals: ChargeApprovals, read_key: Callable[[str], Any], vault_key: str | None, approval: str, now: datetime
) -> dict[str, Any]:
    """An approval as the key that asked for it sees it (`GET /api/billing/approvals/{id}`, the agent tools'
    `get_charge_status`): the vault key must be genuine and the approval its own, else 401 / 404."""
    parsed = parse_vault_key(vault_key)
    key = read_key(parsed.key_id)
    if key is None or not secret_matches(parsed.secret, key.secret_hash):
        raise SpendgateError("vault_key_invalid", "The vault key is unknown or wrong.")
    found = approvals.get(approval)
    if found is None or found.key_id != key.key_id:
        raise SpendgateError("not_found", f"no approval {approval[:40]!r} for this key", param="id")
    return found.view(now)


def _held_message(a: Approval, *, created: bool) -> str:
    return (f"This charge of {a.amount_cents} cents is above the key's approval threshold and waits for approval "
            f"{a.id} (until {a.expires_at}). Nothing was forwarded. Send the same request with the same "
            "Idempotency-Key again only once it is approved." + ("" if created else " It is still pending."))


def decider(headers: Mapping[str, str], body: Any) -> tuple[str, str | None]:
    """(who, why) of an approve / reject: the Easy Auth principal, else the body's `approver`.

    On Azure, App Service Authentication sets `X-MS-CLIENT-PRINCIPAL-NAME` and drops any copy a
    client sent; without it enabled the header is as caller-supplied as `approver` (both are
    recorded as given, behind the function key)."""
    if body is not None and not isinstance(body, Mapping):
        raise SpendgateError("body_invalid", "the body must be a JSON object: {\"approver\", \"reason\"}")
    body = body or {}
    unknown = sorted(set(body) - {"approver", "reason"})
    if unknown:
        raise SpendgateError("policy_invalid", f"unknown field {unknown[0]!r}", param=unknown[0])
    who = {k.lower(): v for k, v in headers.items()}.get(PRINCIPAL_HEADER) or body.get("approver")
    if not isinstance(who, str) or not who.strip() or len(who) > 200 or not who.isprintable():
        raise SpendgateError("policy_invalid", "say who decides: sign in (Easy Auth) or send approver (1-200 "
                             "printable characters)", param="approver")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable()):
        raise SpendgateError("policy_invalid", f"reason must be printable text of at most {MAX_REASON} characters",
                             param="reason")
    return who.strip(), reason
