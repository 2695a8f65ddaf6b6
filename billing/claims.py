"""One charge per customer, billing period and purpose: claim rows in the billing table.

Why a table of our own: the proxy deduplicates per vault key (its idempotency records
live in the key's partition), and every billing run gets a new key, and an agent holds
another. So nothing stopped two runs, or a run and an agent, from charging one customer
twice for one month. The *charge identity* is (customer, billing period, purpose); the
purpose (an invoice id, say) is optional and is what makes a deliberate second charge in
one period a different identity.

The protocol, for every charger (run items and the agents' charge route alike):

1. **Claim before charging.** Insert-if-absent of the identity's row (`create_entity`:
   409 if it exists, atomic on Azure Table Storage and Azurite), naming the *owner*: the
   vault key id and the idempotency key the charge goes out with.
2. **Charge** through the proxy with that key and idempotency key.
3. **Settle.** Money moved (or may still move: an intent `succeeded`, `processing`,
   `requires_action`, `requires_capture`) → the row becomes `charged` with the intent id.
   Nothing moved (a decline, a refused key, an invalid request, an intent in
   `requires_payment_method` or `canceled`) → the row is deleted, so the identity can be
   charged later (a declined card may be retried next week). A transient fault leaves the
   claim: the retry comes from the same owner.

A claim held by someone else is judged from the *proxy's own record* of the owner's
request (`ProxyRecords`), never from the claimer's word:

- the owner's idempotency record is completed with an intent that moved money → the row is
  completed as `charged` (the owner crashed before settling) → `already_charged`;
- completed without money moving → the claim is free: taken over with If-Match;
- in flight or ambiguous at the proxy → `in_progress` (retry later);
- no record, and the owner's key is revoked or expired → free: a revoked key can never
  reach Stripe again (the proxy's "stop means stop"), so the owner cannot charge after us;
- no record, key still active, claim younger than `stale_after` (the proxy's in-flight
  lease) → `in_progress`; older → free. This is the one assumption, the same one the
  proxy's lease makes: an owner does not stall longer than the lease between claiming and
  sending.

Two chargers racing for one identity: exactly one `create` wins; the other sees the row.
Takeovers and completions are If-Match replaces, so two takers cannot both win.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

# Payment intent statuses after which money has moved or may still move without us.
MONEY_MAY_MOVE = frozenset({"succeeded", "processing", "requires_action", "requires_capture"})
CLAIM_PARTITION_PREFIX = "claim-"


class Verdict(StrEnum):
    PROCEED = "proceed"  # the caller holds the claim: charge now
    ALREADY_CHARGED = "already_charged"  # someone charged this identity: `object_id` is the intent
    IN_PROGRESS = "in_progress"  # someone else is charging it right now: retry later


@dataclass(frozen=True)
class Identity:
    """What may be charged once: a customer, a billing period and an optional purpose."""

    customer_id: str
    billing_period: str
    purpose: str | None = None

    @property
    def partition(self) -> str:
        return CLAIM_PARTITION_PREFIX + hashlib.sha256(self.customer_id.encode()).hexdigest()[:32]

    @property
    def row(self) -> str:
        canonical = json.dumps([self.customer_id, self.billing_period, self.purpose or ""], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "billing_period": self.billing_period, "purpose": self.purpose}


@dataclass(frozen=True)
class Owner:
    """Who charges: the vault key and the idempotency key the charge is sent with."""

    key_id: str
    idempotency_key: str
    label: str = ""  # for people reading the row: `azure-durable/{run}` or an agent key's label


@dataclass(frozen=True)
class Claim:
    """The answer to `claim`: go ahead, or who charged / is charging this identity."""

    verdict: Verdict
    owner: Owner | None = None  # the holder (the caller itself on PROCEED)
    object_id: str | None = None
    etag: str | None = None
    mine: bool = False  # the caller already held (or had completed) this claim: a retry


@dataclass(frozen=True)
class Attempt:
    """What the proxy knows of one owner's charge request."""

    state: str  # "completed", "in_flight", "ambiguous" or "none"
    status_code: int | None = None
    object_id: str | None = None
    intent_status: str | None = None

    @property
    def moved_money(self) -> bool:
        ok = self.state == "completed" and self.status_code is not None and 200 <= self.status_code < 300
        return ok and (self.intent_status is None or self.intent_status in MONEY_MAY_MOVE)


class ProxyRecords(Protocol):
    """The proxy's records about a charge request and its key (read-only)."""

    def attempt(self, key_id: str, idempotency_key: str) -> Attempt: ...

    def key_can_send(self, key_id: str, now: datetime) -> bool: ...


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _owner(e: Mapping[str, Any]) -> Owner:
    return Owner(str(e.get("owner_key_id", "")), str(e.get("owner_idempotency_key", "")), str(e.get("owner_label", "")))


class ChargeClaims:
    """Claim, settle and read charge identities in the billing table (see module doc)."""

    def __init__(self, table: TableClient, records: ProxyRecords, stale_after: timedelta) -> None:
        self.table = table
        self.records = records
        self.stale_after = stale_after

    def claim(self, identity: Identity, owner: Owner, amount_cents: int, now: datetime) -> Claim:
        """Claim `identity` for `owner` before charging; never two PROCEEDs for two owners."""
        entity = {
            "PartitionKey": identity.partition,
            "RowKey": identity.row,
            **identity.to_dict(),
            "purpose": identity.purpose or "",
            "state": "claimed",
            "owner_key_id": owner.key_id,
            "owner_idempotency_key": owner.idempotency_key,
            "owner_label": owner.label,
            "amount_cents": amount_cents,
            "object_id": "",
            "claimed_at": _iso(now),
            "updated_at": _iso(now),
        }
        for _ in range(20):
            try:
                meta = self.table.create_entity(entity)
                return Claim(Verdict.PROCEED, owner, etag=meta.get("etag"))
            except ResourceExistsError:
                pass
            try:
                row = self.table.get_entity(identity.partition, identity.row)
            except ResourceNotFoundError:
                continue  # released meanwhile: claim again
            holder, etag = _owner(row), row.metadata.get("etag")
            mine = holder.key_id == owner.key_id and holder.idempotency_key == owner.idempotency_key
            if row.get("state") == "charged":
                verdict = Verdict.PROCEED if mine else Verdict.ALREADY_CHARGED
                return Claim(verdict, holder, row.get("object_id") or None, etag, mine=mine)
            if mine:
                return Claim(Verdict.PROCEED, owner, etag=etag, mine=True)
            attempt = self.records.attempt(holder.key_id, holder.idempotency_key)
            try:
                if attempt.moved_money:  # the holder charged but never settled
                    self._replace(row, {"state": "charged", "object_id": attempt.object_id or "",
                                        "updated_at": _iso(now)}, etag)
                    return Claim(Verdict.ALREADY_CHARGED, holder, attempt.object_id, mine=False)
                if self._free(row, attempt, now):
                    new_etag = self._replace(row, {**entity, "updated_at": _iso(now)}, etag)
                    return Claim(Verdict.PROCEED, owner, etag=new_etag)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # someone else changed it first: look again
            return Claim(Verdict.IN_PROGRESS, holder)
        return Claim(Verdict.IN_PROGRESS, None)

    def _free(self, row: Mapping[str, Any], attempt: Attempt, now: datetime) -> bool:
        if attempt.state == "completed":
            return True  # answered without money moving (moved_money was checked first)
        if attempt.state != "none":
            return False  # in flight or ambiguous at the proxy
        holder = _owner(row)
        if not self.records.key_can_send(holder.key_id, now):
            return True
        claimed_at = datetime.fromisoformat(str(row.get("claimed_at", "")).replace("Z", "+00:00"))
        return now - claimed_at > self.stale_after

    def _replace(self, row: Mapping[str, Any], changes: Mapping[str, Any], etag: str | None) -> str | None:
        entity = {**{k: v for k, v in row.items()}, **changes}
        meta = self.table.update_entity(
            entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
        )
        return meta.get("etag")

    def settle(self, identity: Identity, owner: Owner, *, moved_money: bool, object_id: str | None,
               now: datetime) -> None:
        """After the charge: mark the identity charged, or release it if no money moved.

        Only the owner's own claim is touched (a claim that was taken over is left alone).
        """
        for _ in range(10):
            try:
                row = self.table.get_entity(identity.partition, identity.row)
            except ResourceNotFoundError:
                return
            holder = _owner(row)
            if (holder.key_id, holder.idempotency_key) != (owner.key_id, owner.idempotency_key):
                return
            etag = row.metadata.get("etag")
            try:
                if moved_money:
                    if row.get("state") != "charged" or (object_id and row.get("object_id") != object_id):
                        self._replace(row, {"state": "charged", "object_id": object_id or "",
                                            "updated_at": _iso(now)}, etag)
                elif row.get("state") != "charged":
                    self.table.delete_entity(
                        identity.partition, identity.row, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue

    def read(self, identity: Identity) -> dict[str, Any] | None:
        """The identity's row as stored (for tests and people), or None."""
        try:
            return dict(self.table.get_entity(identity.partition, identity.row))
        except ResourceNotFoundError:
            return None
