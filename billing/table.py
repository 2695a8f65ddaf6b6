"""The billing table (`<prefix>billing`): charge claims and stopped run labels, in one place.

    PartitionKey                    RowKey                          what
    ------------------------------  ------------------------------  -------------------------------------
    claim-<sha256(customer)[:32]>   sha256([customer, period, purpose])  one charge identity (`billing.claims`)
    stopped                         sha256(label)                   a run label that was stopped (`StopMarks`)
    run-approval                    sha256(instance id)             the one decision on a run's approval (`RunDecisions`)

It also adapts the proxy's ledger (read-only, through `proxy.store.LedgerStore`, the one place
that knows that table) into what the claims need to judge someone else's claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient

from billing.charging import declined_object_id
from billing.claims import Attempt, ChargeClaims
from billing.payloads import ApprovalDecision
from core.settings import Settings
from proxy.store import LedgerStore, idem_row_key

STOPPED_PARTITION = "stopped"
DECISION_PARTITION = "run-approval"
_created: set[tuple[int, str]] = set()
_created_lock = threading.Lock()


def billing_table(tables: TableServiceClient, settings: Settings) -> TableClient:
    """The billing table's client (created on first use in this process)."""
    name = f"{settings.table_prefix}billing"
    marker = (id(tables), name)
    with _created_lock:
        if marker not in _created:
            tables.create_table_if_not_exists(name)
            _created.add(marker)
    return tables.get_table_client(name)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class StopMarks:
    """Run labels that were stopped. `POST …/stop` marks them *before* it revokes, and a key
    issued under a marked label is revoked before its id is handed out (`billing.keys`), so
    no key of a stopped run is ever left active, whatever the timing."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    @staticmethod
    def _row(label: str) -> str:
        return hashlib.sha256(label.encode()).hexdigest()

    def mark(self, label: str, now: datetime) -> None:
        with contextlib.suppress(ResourceExistsError):  # stopped before: the first time counts
            self.table.create_entity(
                {"PartitionKey": STOPPED_PARTITION, "RowKey": self._row(label), "label": label, "stopped_at": _iso(now)}
            )

    def is_stopped(self, label: str) -> bool:
        try:
            self.table.get_entity(STOPPED_PARTITION, self._row(label))
        except ResourceNotFoundError:
            return False
        return True


class RunDecisions:
    """The one decision on a billing run's approval: whoever writes it first decides.

    Approve, reject, stop and the run's own timeout all *create* the row (storage refuses a
    second create with 409), so a run is approved, rejected, stopped or timed out, never two of
    them, whatever the timing (docs/approvals.md, "Races")."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    @staticmethod
    def _row(instance_id: str) -> str:
        return hashlib.sha256(instance_id.encode()).hexdigest()

    def decide(self, instance_id: str, decision: ApprovalDecision) -> tuple[bool, ApprovalDecision]:
        """(True, decision) if this call decided; else (False, the decision that was there first)."""
        entity = {"PartitionKey": DECISION_PARTITION, "RowKey": self._row(instance_id), "instance_id": instance_id,
                  "decision": decision.decision, "by": decision.by or "", "reason": decision.reason or "",
                  "at": decision.at or ""}
        try:
            self.table.create_entity(entity)
            return True, decision
        except ResourceExistsError:
            existing = self.get(instance_id)
            assert existing is not None  # rows are never deleted
            return False, existing

    def get(self, instance_id: str) -> ApprovalDecision | None:
        try:
            e = self.table.get_entity(DECISION_PARTITION, self._row(instance_id))
        except ResourceNotFoundError:
            return None
        return ApprovalDecision(e["decision"], e.get("by") or None, e.get("reason") or None, e.get("at") or None)


class LedgerRecords:
    """`billing.claims.ProxyRecords` over the proxy's ledger table (point reads only)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    def attempt(self, key_id: str, idempotency_key: str) -> Attempt:
        if not key_id or not idempotency_key:
            return Attempt("none")
        record = self.store.read_idem(key_id, idem_row_key(idempotency_key))
        if record is None:
            return Attempt("none")
        intent_status = None
        if record.state == "completed" and record.body:
            try:
                doc = json.loads(record.body)
            except ValueError:
                doc = {}
            intent_status = doc.get("status") if isinstance(doc, dict) and isinstance(doc.get("status"), str) else None
        return Attempt(record.state, record.status_code, record.object_id, intent_status)

    def declined_object_id(self, key_id: str, idempotency_key: str) -> str | None:
        """The payment intent (else charge) a declined request's stored answer names."""
        record = self.store.read_idem(key_id, idem_row_key(idempotency_key)) if key_id and idempotency_key else None
        if record is None or record.state != "completed" or record.status_code != 402 or not record.body:
            return None
        try:
            doc = json.loads(record.body)
        except ValueError:
            return None
        return declined_object_id(doc) if isinstance(doc, dict) else None

    def key_can_send(self, key_id: str, now: datetime) -> bool:
        key = self.store.read_key(key_id) if key_id else None
        return key is not None and key.status(now) == "active"


def charge_claims(tables: TableServiceClient, settings: Settings) -> ChargeClaims:
    """The claims over the app's tables; stale after the proxy's in-flight lease."""
    lease = timedelta(seconds=2 * settings.stripe_timeout_seconds + 10)
    return ChargeClaims(billing_table(tables, settings), LedgerRecords(LedgerStore(tables, settings)), lease)


def stop_marks(tables: TableServiceClient, settings: Settings) -> StopMarks:
    return StopMarks(billing_table(tables, settings))


def run_decisions(tables: TableServiceClient, settings: Settings) -> RunDecisions:
    return RunDecisions(billing_table(tables, settings))
