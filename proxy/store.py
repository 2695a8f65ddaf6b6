"""The one place that knows spendgate's ledger table layout.

One table, ``<prefix>ledger``. The PartitionKey is the vault key id, so everything
about one key lives in one partition and can change in one entity-group transaction:

    RowKey                        what
    ----------------------------  ------------------------------------------------------
    key                           policy, secret hash, status, and the spend counters
    idem-<sha256(idem key)>       one idempotency record (in_flight / ambiguous / completed)
    audit-<inverted ms>-<req id>  one audit row per request (newest sorts first)
    lease-<nn>                    a headroom lease: a slice of the cap one instance reserves
                                  against (its fields: proxy/lease_rows.py, docs/ledger.md)

Requests whose vault key could not be authenticated are audited, by sample
(proxy/noise.py), in the partition ``_unauthenticated``. A completed record's answer is
stored compact and within Table Storage's UTF-16 limits (proxy/answers.py). Everything else in the proxy works with the dataclasses below and
the operation builders; only this module turns them into entities.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableServiceClient,
    TableTransactionError,
    UpdateMode,
)

from core.errors import SpendgateError
from core.settings import Settings
from core.storage import query_rows, submit_transaction
from proxy.answers import compact_answer, utf16_chunks

KEY_ROW = "key"
IDEM_PREFIX = "idem-"
AUDIT_PREFIX = "audit-"
LEASE_PREFIX = "lease-"
UNAUTHENTICATED = "_unauthenticated"
_INVERT_MS = 10**14

Operation = tuple[Any, ...]


class Conflict(Exception):
    """An If-Match or create lost a race; re-read and try again.

    `index` is the failed operation's position in a transaction when storage named it
    (the group-commit ledger uses it to drop just that request from a batch)."""

    def __init__(self, message: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Counters:
    """Spend counters of one key, in cents. The window is one UTC day."""

    window_day: str = ""
    window_spent: int = 0
    window_pending: int = 0
    total_spent: int = 0
    total_pending: int = 0
    window_leased: int = 0  # cents granted to lease rows for window_day (proxy/leases.py)
    total_leased: int = 0  # cents granted to every lease row
    leases: int = 0  # lease rows in the partition


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    vendor: str
    label: str
    secret_hash: str
    daily_cap_cents: int
    total_cap_cents: int | None
    allowed_endpoints: tuple[str, ...]
    expires_at: datetime
    created_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    auto_idempotency: bool = True
    revoked_at: datetime | None = None
    counters: Counters = Counters()
    approval_above_cents: int | None = None  # charges above this wait for a person (proxy/approvals.py)
    alert_thresholds: tuple[int, ...] | None = None  # percents of the binding cap; None: 50/80/100 (alert_bands)
    alerts_fired: str = ""  # `<window>:<percent>,…` fired in the current window (proxy/alert_bands.py)
    etag: str | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True)
class IdemRecord:
    key_id: str
    idempotency_key: str
    state: str  # in_flight | ambiguous | completed
    fingerprint: str
    method: str
    path: str
    kind: str | None
    amount_cents: int  # reserved against the cap (0 when not metered)
    reserve_day: str
    created_at: datetime
    lease_until: datetime
    expires_at: datetime
    forwarded_key: str
    marker: str | None = None
    attempts: int = 1
    status_code: int | None = None
    body: str | None = None
    content_type: str | None = None
    object_id: str | None = None
    held: bool = False  # completed, but its reservation stays pending until the intent resolves (proxy/holds.py)
    etag: str | None = None

    @property
    def row_key(self) -> str:
        return idem_row_key(self.idempotency_key)


@dataclass(frozen=True)
class AuditRow:
    time: datetime
    key_id: str
    label: str
    method: str
    path: str
    idempotency_key: str | None
    amount: int | None
    currency: str | None
    decision: str
    upstream_status: int | None
    stripe_object_id: str | None
    latency_ms: int
    request_id: str

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["time"] = _iso(self.time)
        return d


def idem_row_key(idempotency_key: str) -> str:
    return IDEM_PREFIX + hashlib.sha256(idempotency_key.encode()).hexdigest()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _i64(v: int) -> EntityProperty:
    return EntityProperty(int(v), EdmType.INT64)


def _int(v: Any, default: int = 0) -> int:
    if v is None:
        return default
    return int(v.value) if isinstance(v, EntityProperty) else int(v)


def _dt(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).astimezone(UTC)


def encode_token(token: Any) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode() if token else None


def decode_token(text: str | None) -> Any:
    if not text:
        return None
    try:
        token = json.loads(base64.urlsafe_b64decode(text.encode()))
    except ValueError:
        token = None
    # The SDK's tokens are small dicts of strings; anything else would make it raise later.
    if not isinstance(token, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in token.items()):
        raise SpendgateError("policy_invalid", "continuation is not a valid token", param="continuation")
    return token


# --- entity <-> dataclass --------------------------------------------------------------
def _counters_entity(key_id: str, c: Counters) -> dict[str, Any]:
    return {
        "PartitionKey": key_id, "RowKey": KEY_ROW, "window_day": c.window_day,
        "window_spent": _i64(c.window_spent), "window_pending": _i64(c.window_pending),
        "total_spent": _i64(c.total_spent), "total_pending": _i64(c.total_pending),
        "window_leased": _i64(c.window_leased), "total_leased": _i64(c.total_leased), "leases": _i64(c.leases),
    }


def key_to_entity(k: KeyRecord) -> dict[str, Any]:
    e = _counters_entity(k.key_id, k.counters)
    e.update({
        "kind": "key", "vendor": k.vendor, "label": k.label, "secret_hash": k.secret_hash,
        "daily_cap_cents": _i64(k.daily_cap_cents),
        "total_cap_cents": _i64(k.total_cap_cents if k.total_cap_cents is not None else -1),
        "allowed_endpoints": json.dumps(list(k.allowed_endpoints)), "expires_at": _iso(k.expires_at),
        "created_at": _iso(k.created_at), "metadata": json.dumps(k.metadata),
        "auto_idempotency": k.auto_idempotency, "revoked_at": _iso(k.revoked_at) if k.revoked_at else "",
        "approval_above_cents": _i64(k.approval_above_cents if k.approval_above_cents is not None else -1),
        "alert_thresholds": "" if k.alert_thresholds is None else json.dumps(list(k.alert_thresholds)),
        "alerts_fired": k.alerts_fired,
    })
    return e


def key_from_entity(e: Any) -> KeyRecord:
    total_cap = _int(e.get("total_cap_cents"), -1)
    return KeyRecord(
        key_id=e["PartitionKey"], vendor=e.get("vendor", "stripe"), label=e["label"], secret_hash=e["secret_hash"],
        daily_cap_cents=_int(e["daily_cap_cents"]), total_cap_cents=None if total_cap < 0 else total_cap,
        allowed_endpoints=tuple(json.loads(e["allowed_endpoints"])), expires_at=_dt(e["expires_at"]),  # type: ignore[arg-type]
        created_at=_dt(e["created_at"]), metadata=json.loads(e.get("metadata") or "{}"),  # type: ignore[arg-type]
        auto_idempotency=bool(e.get("auto_idempotency", True)), revoked_at=_dt(e.get("revoked_at")),
        counters=Counters(e.get("window_day", ""), _int(e.get("window_spent")), _int(e.get("window_pending")),
                          _int(e.get("total_spent")), _int(e.get("total_pending")), _int(e.get("window_leased")),
                          _int(e.get("total_leased")), _int(e.get("leases"))),
        approval_above_cents=None if _int(e.get("approval_above_cents"), -1) < 0 else _int(e["approval_above_cents"]),
        alert_thresholds=tuple(json.loads(e["alert_thresholds"])) if e.get("alert_thresholds") else None,
        alerts_fired=e.get("alerts_fired") or "",
        etag=e.metadata.get("etag") if hasattr(e, "metadata") else None,
    )


def idem_to_entity(r: IdemRecord) -> dict[str, Any]:
    e: dict[str, Any] = {
        "PartitionKey": r.key_id, "RowKey": r.row_key, "idempotency_key": r.idempotency_key, "state": r.state,
        "fingerprint": r.fingerprint, "method": r.method, "path": r.path, "req_kind": r.kind or "",
        "amount_cents": _i64(r.amount_cents), "reserve_day": r.reserve_day, "created_at": _iso(r.created_at),
        "lease_until": _iso(r.lease_until), "expires_at": _iso(r.expires_at), "forwarded_key": r.forwarded_key,
        "marker": r.marker or "", "attempts": r.attempts, "status_code": r.status_code or 0,
        "content_type": (r.content_type or "")[:100], "object_id": (r.object_id or "")[:255], "held": r.held,
    }
    chunks = utf16_chunks(compact_answer(r.body)) if r.body else []
    e["body_chunks"] = len(chunks)
    for i, chunk in enumerate(chunks):
        e[f"body_{i}"] = chunk
    return e


def idem_from_entity(e: Any) -> IdemRecord:
    body = "".join(e.get(f"body_{i}", "") for i in range(int(e.get("body_chunks", 0))))
    return IdemRecord(
        key_id=e["PartitionKey"], idempotency_key=e["idempotency_key"], state=e["state"], fingerprint=e["fingerprint"],
        method=e["method"], path=e["path"], kind=e.get("req_kind") or None, amount_cents=_int(e.get("amount_cents")),
        reserve_day=e.get("reserve_day", ""), created_at=_dt(e["created_at"]), lease_until=_dt(e["lease_until"]),  # type: ignore[arg-type]
        expires_at=_dt(e["expires_at"]), forwarded_key=e["forwarded_key"], marker=e.get("marker") or None,  # type: ignore[arg-type]
        attempts=int(e.get("attempts", 1)), status_code=int(e.get("status_code") or 0) or None,
        body=body if e.get("body_chunks") else None, content_type=e.get("content_type") or None,
        object_id=e.get("object_id") or None, held=bool(e.get("held", False)), etag=e.metadata.get("etag"),
    )


def audit_to_entity(a: AuditRow) -> dict[str, Any]:
    ms = int(a.time.timestamp() * 1000)
    return {
        "PartitionKey": a.key_id or UNAUTHENTICATED, "RowKey": f"{AUDIT_PREFIX}{_INVERT_MS - ms:014d}-{a.request_id}",
        "time": _iso(a.time), "key_id": a.key_id, "label": a.label, "method": a.method, "path": a.path,
        "idempotency_key": a.idempotency_key or "", "amount": _i64(a.amount) if a.amount is not None else _i64(-1),
        "currency": a.currency or "", "decision": a.decision, "upstream_status": a.upstream_status or 0,
        "stripe_object_id": a.stripe_object_id or "", "latency_ms": a.latency_ms, "request_id": a.request_id,
    }


def audit_from_entity(e: Any) -> dict[str, Any]:
    amount = _int(e.get("amount"), -1)
    return {
        "time": e["time"], "key_id": e["key_id"], "label": e["label"], "method": e["method"], "path": e["path"],
        "idempotency_key": e.get("idempotency_key") or None, "amount": None if amount < 0 else amount,
        "currency": e.get("currency") or None, "decision": e["decision"],
        "upstream_status": int(e.get("upstream_status") or 0) or None,
        "stripe_object_id": e.get("stripe_object_id") or None, "latency_ms": int(e.get("latency_ms", 0)),
        "request_id": e["request_id"],
    }


# --- operations (for submit) -------------------------------------------------------------
def op_update_counters(key: KeyRecord, counters: Counters) -> Operation:
    """If-Match merge of only the counters: any concurrent change (a reservation, a revoke) fails it."""
    return ("update", _counters_entity(key.key_id, counters),
            {"mode": UpdateMode.MERGE, "etag": key.etag, "match_condition": MatchConditions.IfNotModified})


def op_create_idem(r: IdemRecord) -> Operation:
    return ("create", idem_to_entity(r))


def op_replace_idem(r: IdemRecord) -> Operation:
    """If-Match replace: only the holder of the record's current version may change it."""
    return ("update", idem_to_entity(r),
            {"mode": UpdateMode.REPLACE, "etag": r.etag, "match_condition": MatchConditions.IfNotModified})


def op_delete_idem(r: IdemRecord) -> Operation:
    return ("delete", {"PartitionKey": r.key_id, "RowKey": r.row_key},
            {"etag": r.etag, "match_condition": MatchConditions.IfNotModified})


def op_create_audit(a: AuditRow) -> Operation:
    return ("create", audit_to_entity(a))


def _named_index(exc: TableTransactionError) -> int | None:
    """The failed operation's index, only when the service's message really names one."""
    head = (exc.message or "").split(":", 1)[0].strip()
    return int(head) if head.isdigit() else None


_created_tables: set[tuple[int, str]] = set()
_created_lock = threading.Lock()

_per_table: dict[tuple[int, str, type], tuple[TableServiceClient, Any]] = {}
_per_table_lock = threading.Lock()


def per_ledger_table[T](tables: TableServiceClient, store: LedgerStore, kind: type[T], *args: Any) -> T:
    """The one `kind(*args)` per (table service, ledger table) in this process, so every
    request thread shares it (the group ledger's lanes, the known key rows). Holds `tables`
    so its id stays unique."""
    marker = (id(tables), store.table_name, kind)
    with _per_table_lock:
        if marker not in _per_table:
            _per_table[marker] = (tables, kind(*args))
        return _per_table[marker][1]


class LedgerStore:
    """Table access for the proxy. Storage failures surface as `governance_unavailable`."""

    def __init__(self, tables: TableServiceClient, settings: Settings) -> None:
        self.table_name = f"{settings.table_prefix}ledger"
        self._tables = tables
        self._table: TableClient | None = None

    @property
    def table(self) -> TableClient:
        if self._table is None:
            marker = (id(self._tables), self.table_name)
            with _created_lock:
                if marker not in _created_tables:
                    self._guard(lambda: self._tables.create_table_if_not_exists(self.table_name))
                    _created_tables.add(marker)
            self._table = self._tables.get_table_client(self.table_name)
        return self._table

    @staticmethod
    def _guard(fn: Any) -> Any:
        try:
            return fn()
        except (ResourceModifiedError, ResourceExistsError) as exc:
            raise Conflict(str(exc)) from None
        except TableTransactionError as exc:
            if exc.status_code in (409, 412):
                raise Conflict(exc.error_code or "", _named_index(exc)) from None
            raise SpendgateError("governance_unavailable") from exc
        except ResourceNotFoundError:
            raise
        except AzureError as exc:
            raise SpendgateError("governance_unavailable") from exc

    def submit(self, ops: list[Operation]) -> list[str]:
        """Apply operations atomically (one partition); returns their new etags. Raises Conflict."""
        if len(ops) == 1 and ops[0][0] == "create":
            meta = self._guard(lambda: self.table.create_entity(ops[0][1]))
            return [meta.get("etag")]
        results = self._guard(lambda: submit_transaction(self.table, ops))
        return [r.get("etag") for r in results]

    # Point reads only: a query for two rows (`RowKey eq a or RowKey eq b`) is a partition scan
    # on Azure Table Storage (its design guide says so) and a table scan on Azurite, so its
    # cost grew with every idempotency record and audit row of the key (docs/ledger.md).
    def read_key(self, key_id: str) -> KeyRecord | None:
        return self._read_row(key_id, KEY_ROW, key_from_entity)

    def read_idem(self, key_id: str, idem_row: str) -> IdemRecord | None:
        return self._read_row(key_id, idem_row, idem_from_entity)

    def read_key_and_idem(self, key_id: str, idem_row: str | None) -> tuple[KeyRecord | None, IdemRecord | None]:
        """The key row and (optionally) one idempotency record: two point reads."""
        return self.read_key(key_id), (self.read_idem(key_id, idem_row) if idem_row else None)

    def _read_row(self, key_id: str, row_key: str, convert: Any) -> Any:
        try:
            return convert(self._guard(lambda: self.table.get_entity(key_id, row_key)))
        except ResourceNotFoundError:
            return None

    def insert_key(self, key: KeyRecord) -> KeyRecord:
        etag = self.submit([("create", key_to_entity(key))])[0]
        return replace(key, etag=etag)

    def mark_revoked(self, key_id: str, revoked_at: datetime) -> None:
        """ONE entity-group transaction stamps `revoked_at` on the key row and on every lease row.

        It changes every one of their ETags at once, so every reservation prepared from an
        earlier read, on the key row or on a lease (proxy/leases.py), fails its If-Match. The
        key row's If-Match (on the version read with the leases) makes sure no lease row was
        added or removed in between: both change the key row."""
        for _attempt in range(60):
            key, leases = self.key_and_lease_entities(key_id)
            if key is None:
                return
            stamp = {"revoked_at": _iso(revoked_at)}
            ops: list[Operation] = [("update", {"PartitionKey": key_id, "RowKey": KEY_ROW, **stamp},
                                     {"mode": UpdateMode.MERGE, "etag": key.metadata["etag"],
                                      "match_condition": MatchConditions.IfNotModified})]
            ops += [("update", {"PartitionKey": key_id, "RowKey": e["RowKey"], **stamp}, {"mode": UpdateMode.MERGE})
                    for e in leases]
            try:
                self.submit(ops)
                return
            except Conflict:
                continue
        raise SpendgateError("governance_unavailable", "The key's rows kept changing; the revoke did not apply.")

    def key_and_lease_entities(self, key_id: str) -> tuple[Any, list[Any]]:
        """The key row and every lease row of the partition, in ONE range query: "key" < "lease-…" <
        "lease." and no other row sorts between them (idem-…, audit-… sort before "key")."""
        pk = key_id.replace("'", "''")
        flt = f"PartitionKey eq '{pk}' and RowKey ge '{KEY_ROW}' and RowKey lt 'lease.'"
        rows = self._guard(lambda: query_rows(self.table, flt))  # parsed lean: read whenever a lease runs short
        key = next((r for r in rows if r["RowKey"] == KEY_ROW), None)
        return key, [r for r in rows if r["RowKey"].startswith(LEASE_PREFIX)]

    def read_row(self, key_id: str, row_key: str) -> Any:
        """One row of the partition as the SDK returns it (None when absent)."""
        return self._read_row(key_id, row_key, lambda e: e)

    def insert_audit(self, row: AuditRow) -> None:
        self.submit([op_create_audit(row)])

    def keys(self, label: str | None, limit: int, continuation: str | None) -> tuple[list[KeyRecord], str | None]:
        flt = f"RowKey eq '{KEY_ROW}'"
        params: dict[str, Any] = {}
        if label is not None:
            flt += " and label eq @label"
            params["label"] = label
        pages = self.table.query_entities(flt, parameters=params, results_per_page=limit)
        return self._page(pages, continuation, key_from_entity)

    def audit_page(self, key_id: str, limit: int, continuation: str | None) -> tuple[list[dict[str, Any]], str | None]:
        flt = f"PartitionKey eq @pk and RowKey ge '{AUDIT_PREFIX}' and RowKey lt 'audit.'"
        pages = self.table.query_entities(flt, parameters={"pk": key_id}, results_per_page=limit)
        return self._page(pages, continuation, audit_from_entity)

    def audit_rows(self, key_id: str) -> Iterator[dict[str, Any]]:
        flt = f"PartitionKey eq @pk and RowKey ge '{AUDIT_PREFIX}' and RowKey lt 'audit.'"
        yield from (audit_from_entity(e) for e in self._guard(
            lambda: list(self.table.query_entities(flt, parameters={"pk": key_id}))))

    def idem_records(self, key_id: str, states: Iterable[str]) -> list[IdemRecord]:
        flt = f"PartitionKey eq @pk and RowKey ge '{IDEM_PREFIX}' and RowKey lt 'idem.'"
        wanted = set(states)
        rows = self._guard(lambda: list(self.table.query_entities(flt, parameters={"pk": key_id})))
        return [r for r in map(idem_from_entity, rows) if r.state in wanted]

    def held_records(self, key_id: str, object_id: str | None = None) -> list[IdemRecord]:
        """The key's completed records whose reservation is held (optionally for one object)."""
        flt = f"PartitionKey eq @pk and RowKey ge '{IDEM_PREFIX}' and RowKey lt 'idem.' and held eq true"
        params: dict[str, Any] = {"pk": key_id}
        if object_id is not None:
            flt += " and object_id eq @oid"
            params["oid"] = object_id
        rows = self._guard(lambda: list(self.table.query_entities(flt, parameters=params)))
        return [idem_from_entity(r) for r in rows]

    def _page(self, pages: Any, continuation: str | None, convert: Any) -> tuple[list[Any], str | None]:
        def run() -> tuple[list[Any], str | None]:
            pager = pages.by_page(continuation_token=decode_token(continuation))
            items = [convert(e) for e in next(pager, [])]
            return items, encode_token(pager.continuation_token)
        return self._guard(run)
