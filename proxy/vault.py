"""VaultService: issue, describe, list, revoke and audit vault keys; reconcile the ledger.

The admin HTTP routes and in-app activities both call these methods, so a key issued
by an orchestration is the same thing as one issued over HTTP. Every method raises
`SpendgateError` for a caller's mistake (unknown key, invalid policy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from azure.data.tables import TableServiceClient

from core.errors import SpendgateError
from core.settings import Settings
from proxy import keys
from proxy.alert_bands import thresholds
from proxy.forward import ProxyDeps
from proxy.holds import resolve_hold
from proxy.idempotency import lookup_conclusive, taken_over
from proxy.lease_rows import insert_key_with_leases, with_leases
from proxy.ledger import current, headroom
from proxy.outcome import outcome_ops
from proxy.policy import parse_policy
from proxy.store import Conflict, IdemRecord, KeyRecord, LedgerStore, op_delete_idem, op_replace_idem
from proxy.upstream import LookupIncomplete, Upstream, find_created, read_object


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


class VaultService:
    """The vault's domain operations over one ledger table."""

    def __init__(
        self, tables: TableServiceClient, settings: Settings, clock: Callable[[], datetime] = utcnow,
        *, stripe_http: httpx.Client | None = None, watch: Callable[[str, datetime], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = LedgerStore(tables, settings)
        self._tables = tables
        self._stripe_http = stripe_http
        self._watch = watch  # indexes a key for the alert sweeper before it is created (alerts/sweeper.py)

    # --- keys ------------------------------------------------------------------------
    def issue(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Create a key from a policy request; the answer holds the secret (shown once)."""
        key_id = keys.new_key_id()
        return self._issue(request, key_id, keys.new_secret())

    def issue_in_app(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Create a key for the app's own activities: the answer holds no secret.

        Its secret is derived from the key id (see `proxy.keys.derive_secret`), so the
        key id is all that needs to travel through orchestration history;
        `in_app_vault_key` turns it back into a usable key inside the process.
        """
        key_id = keys.new_key_id()
        issued = self._issue(request, key_id, keys.derive_secret(self.settings.stripe_secret_key, key_id))
        del issued["vault_key"]
        return issued

    def in_app_vault_key(self, key_id: str) -> str:
        """The full vault key of a key made by `issue_in_app` (any other id yields a key that fails auth)."""
        if not keys.is_valid_key_id(key_id):
            raise SpendgateError("vault_key_invalid", "Not a vault key id.", param="key_id")
        return keys.format_vault_key(key_id, keys.derive_secret(self.settings.stripe_secret_key, key_id))

    def _issue(self, request: Mapping[str, Any], key_id: str, secret: str) -> dict[str, Any]:
        now = self.clock()
        policy = parse_policy(request, now)
        record = KeyRecord(
            key_id=key_id, vendor=policy.vendor, label=policy.label, secret_hash=keys.hash_secret(secret),
            daily_cap_cents=policy.daily_cap_cents, total_cap_cents=policy.total_cap_cents,
            allowed_endpoints=tuple(policy.endpoint_strings()), expires_at=policy.expires_at, created_at=now,
            metadata=policy.metadata, auto_idempotency=policy.auto_idempotency,
            approval_above_cents=policy.approval_above_cents, alert_thresholds=policy.alert_thresholds,
        )
        if self._watch is not None:  # first: a key whose thresholds the sweeper would not find never exists
            self._watch(key_id, policy.expires_at)
        # Issued with its lease rows, so instances that start a fan-out together only claim one each
        # (docs/ledger.md, "The cap across many instances").
        insert_key_with_leases(self.store, record, now.date().isoformat())
        return {**self._view(record, now), "vault_key": keys.format_vault_key(key_id, secret)}

    def describe(self, key_id: str) -> dict[str, Any]:
        return self._view(self._get(key_id), self.clock())

    def list(self, label: str | None = None, limit: int = 100, continuation: str | None = None) -> dict[str, Any]:
        if not 1 <= int(limit) <= 1000:
            raise SpendgateError("policy_invalid", "limit must be between 1 and 1000", param="limit")
        now = self.clock()
        records, token = self.store.keys(label, int(limit), continuation)
        return {"data": [self._view(r, now) for r in records], "continuation": token}

    def revoke(self, key_id: str, on_revoked: Callable[[str, str], None] | None = None,
               before_revoke: Callable[[str, str], None] | None = None) -> dict[str, Any]:
        """Revoke a key (idempotent). Once this returns, no request with the key is forwarded.

        `on_revoked(key_id, label)` runs after a revoke that happened now (the route's alert),
        `before_revoke` just before it (the alert staged, alerts/outbox.py)."""
        record = self._get(key_id)
        if record.revoked_at is None:
            revoked_at = self.clock()
            if before_revoke is not None:
                before_revoke(key_id, record.label)
            self.store.mark_revoked(key_id, revoked_at)
            if on_revoked is not None:
                on_revoked(key_id, record.label)
        else:
            revoked_at = record.revoked_at
        return {"key_id": key_id, "status": "revoked", "revoked_at": _iso(revoked_at)}

    def audit(self, key_id: str, limit: int = 50, continuation: str | None = None) -> dict[str, Any]:
        if not 1 <= int(limit) <= 1000:
            raise SpendgateError("policy_invalid", "limit must be between 1 and 1000", param="limit")
        self._get(key_id)
        rows, token = self.store.audit_page(key_id, int(limit), continuation)
        return {"data": rows, "continuation": token}

    def spend(self, label: str) -> dict[str, Any]:
        """Totals for every key with `label`: lifetime spent and pending, requests by decision."""
        if not label:
            raise SpendgateError("policy_invalid", "label is required", param="label")
        now = self.clock()
        views, by_decision = [], {}
        token: str | None = None
        while True:
            records, token = self.store.keys(label, 1000, token)
            for r in records:
                views.append(self._view(r, now))
                for row in self.store.audit_rows(r.key_id):
                    by_decision[row["decision"]] = by_decision.get(row["decision"], 0) + 1
            if not token:
                break
        return {
            "label": label,
            "spent_cents": sum(v["total_spent_cents"] for v in views),
            "pending_cents": sum(v["total_pending_cents"] for v in views),
            "requests_by_decision": by_decision,
            "keys": views,
        }

    # --- reconcile -------------------------------------------------------------------
    def reconcile(self, key_id: str) -> dict[str, Any]:
        """Resolve the key's ambiguous (and abandoned in-flight) requests by asking Stripe.

        Found (by its marker, or for a confirm or capture by the intent's status) → the
        reservation is settled and the record completed (later retries replay it); a payment
        intent that is not finished is held instead, and held intents are settled once paid,
        released once canceled (proxy/holds.py). Not found
        → the amount stays pending until the lookup is conclusive (`lookup_conclusive`: 24 h
        after the record's last lease ended, the window in which Stripe may still act on the
        forwarded idempotency key, and a lookup that read to the end); only then is the
        reservation released and the record deleted (a retry forwards afresh).
        """
        key = self._get(key_id)
        now = self.clock()
        deps = ProxyDeps(self.store, self._http(), self.settings)
        results: list[dict[str, Any]] = []
        for record in self.store.idem_records(key_id, ("ambiguous", "in_flight")):
            if record.state == "in_flight" and now < record.lease_until:
                continue  # a request is working on it right now
            results.append(self._reconcile_one(deps, key, record, now))
            key = self._get(key_id)
        for record in self.store.held_records(key_id):
            results.append(self._resolve_hold(deps, key, record))
            key = self._get(key_id)
        return {"key_id": key_id, "resolved": [r for r in results if r], "describe": self._view(key, now)}

    def _reconcile_one(self, deps: ProxyDeps, key: KeyRecord, record: IdemRecord, now: datetime) -> dict[str, Any]:
        conclusive = lookup_conclusive(record, now)  # judged on the lease as it was, before this claim
        try:
            etag = self.store.submit([op_replace_idem(taken_over(record, now, deps.lease))])[0]
        except Conflict:
            return {}
        original_lease = record.lease_until
        record = replace(taken_over(record, now, deps.lease), etag=etag)
        try:
            found = find_created(deps.stripe_http, self.settings.stripe_secret_key, record,
                                 self.settings.stripe_version, deadline=deps.lookup_seconds)
        except (httpx.HTTPError, ValueError, LookupIncomplete) as exc:
            self._hand_back(record, original_lease)
            raise SpendgateError("upstream_unavailable", "Stripe could not be asked; try again.") from exc
        if found is None and not conclusive:
            # Not found yet is not "never": Stripe may still act on the forwarded key.
            self._hand_back(record, original_lease)
            return {"idempotency_key": record.idempotency_key, "outcome": "pending", "amount_cents": record.amount_cents,
                    "object_id": None}
        action = "release"
        for _ in range(60):
            try:
                if found is not None:
                    # Settled, or held when the intent is not finished (proxy/holds.py).
                    action, op = outcome_ops(record, Upstream("response", 200, json.dumps(found)))
                    if record.amount_cents and action == "settle":
                        deps.ledger.settle(key, record.amount_cents, record.reserve_day, [op])
                    else:
                        self.store.submit([op])
                else:
                    extra = [op_delete_idem(record)]
                    if record.amount_cents:
                        deps.ledger.release(key, record.amount_cents, record.reserve_day, extra)
                    else:
                        self.store.submit(extra)
                break
            except Conflict:
                key = self._get(key.key_id)
                current = self.store.read_idem(key.key_id, record.row_key)
                if current is None or current.etag != record.etag:
                    return {}  # a retry took the record over while we looked: it owns the outcome
        outcome = {"settle": "settled", "keep": "held"}.get(action, "released")
        return {"idempotency_key": record.idempotency_key, "outcome": outcome, "amount_cents": record.amount_cents,
                "object_id": found.get("id") if found else None}

    def _resolve_hold(self, deps: ProxyDeps, key: KeyRecord, record: IdemRecord) -> dict[str, Any]:
        """A held payment intent (proxy/holds.py): settled once paid, released once canceled."""
        try:
            intent = read_object(deps.stripe_http, self.settings.stripe_secret_key,
                                 f"/v1/payment_intents/{record.object_id}", self.settings.stripe_version)
        except (httpx.HTTPError, ValueError) as exc:
            raise SpendgateError("upstream_unavailable", "Stripe could not be asked; try again.") from exc
        outcome = resolve_hold(deps, key, record, (intent or {}).get("status"))
        return {"idempotency_key": record.idempotency_key, "outcome": outcome, "amount_cents": record.amount_cents,
                "object_id": record.object_id}

    # --- helpers ---------------------------------------------------------------------
    def _hand_back(self, record: IdemRecord, lease_until: datetime) -> None:
        """Return a claimed record to `ambiguous` with its earlier lease (the amount stays pending)."""
        self.store.submit([op_replace_idem(replace(record, state="ambiguous", lease_until=lease_until))])

    def _http(self) -> httpx.Client:
        if self._stripe_http is None:
            from core.runtime import runtime

            self._stripe_http = runtime().stripe_http
        return self._stripe_http

    def _get(self, key_id: str) -> KeyRecord:
        record = self.store.read_key(key_id) if keys.is_valid_key_id(key_id) else None
        if record is None:
            raise SpendgateError("not_found", f"No vault key {key_id[:40]!r}.", param="key_id")
        return record

    def _view(self, r: KeyRecord, now: datetime) -> dict[str, Any]:
        day = now.date().isoformat()
        r = with_leases(self.store, r, day)  # what the key's lease rows hold counts too (proxy/leases.py)
        c = current(r.counters, day)
        return {
            "key_id": r.key_id, "vendor": r.vendor, "label": r.label, "status": r.status(now),
            "allowed_endpoints": list(r.allowed_endpoints), "metadata": r.metadata,
            "auto_idempotency": r.auto_idempotency, "created_at": _iso(r.created_at),
            "expires_at": _iso(r.expires_at), "revoked_at": _iso(r.revoked_at),
            "cap_cents": r.daily_cap_cents, "daily_cap_cents": r.daily_cap_cents, "total_cap_cents": r.total_cap_cents,
            "window_day": day, "spent_cents": c.window_spent, "pending_cents": c.window_pending,
            "remaining_cents": headroom(r, day), "total_spent_cents": c.total_spent,
            "total_pending_cents": c.total_pending, "approval_above_cents": r.approval_above_cents,
            "alert_thresholds": list(thresholds(r)), "alerts_fired": r.alerts_fired or None,
        }


def vault_service() -> VaultService:
    """A VaultService on the process's runtime clients."""
    from alerts.notify import watch_key
    from core.runtime import runtime

    rt = runtime()
    return VaultService(rt.tables, rt.settings, stripe_http=rt.stripe_http, watch=watch_key)
