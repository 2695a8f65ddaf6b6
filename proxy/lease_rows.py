"""Headroom lease rows: what one lease holds, how it is stored, and the partition's real counters.

A key's partition holds its key row and up to `MAX_LEASES` lease rows (`lease-00` … ). Each lease
is a slice (`grant`) of the key's cap for one UTC `day`, reserved against by the instance that
owns it (`proxy/leases.py`); the key row counts what it granted (`window_leased`,
`total_leased`) and how many lease rows exist (`leases`). So what a key really spent and has
pending is the key row's counters with every lease folded in (`partition_counters`), which is
what describe/list/spend show (`with_leases`).

Keys are issued with their lease rows (`insert_key_with_leases`, one transaction with the key
row): instances starting a fan-out together then find the rows there and only claim one each,
instead of racing to create them (docs/ledger.md, "The cap across many instances"). A key
issued without them (before leases existed) gets them from its first reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import EdmType, EntityProperty, UpdateMode

from proxy import alert_bands
from proxy.ledger import current, headroom
from proxy.store import LEASE_PREFIX, Counters, KeyRecord, LedgerStore, Operation, key_from_entity, key_to_entity

MAX_LEASES = 64  # lease rows per key: a revoke (key row + every lease) and a day's rollover must fit one transaction
LEASE_UNITS = 8  # a lease made by a first reservation holds room for at least this many reservations of its amount
ISSUE_LEASE_CENTS = 1_000  # a lease made at issue holds at least this much (the charge size is not known yet)
LEASE_ROUNDING = 100  # leases made at issue hold whole dollars (the rest stays on the key row), the charge size unknown


@dataclass(frozen=True)
class Lease:
    """One lease row: `grant` cents of the key's cap for `day`, and what was done with them."""

    key_id: str
    slot: str  # RowKey: lease-<nn>
    day: str
    grant: int = 0
    spent: int = 0
    pending: int = 0
    owner: str = ""
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    etag: str | None = None

    @property
    def room(self) -> int:
        return self.grant - self.spent - self.pending

    def claimable(self, owner: str, now: datetime) -> bool:
        return self.owner in ("", owner) or self.expires_at is None or self.expires_at <= now

    def moved(self, action: str, amount: int) -> Lease:
        if action == "reserve":
            return replace(self, pending=self.pending + amount)
        if action == "settle":
            return replace(self, pending=self.pending - amount, spent=self.spent + amount)
        return replace(self, pending=self.pending - amount)


def _i64(v: int) -> EntityProperty:
    return EntityProperty(int(v), EdmType.INT64)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else ""


def _dt(v: Any) -> datetime | None:
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).astimezone(UTC) if v else None


def _int(v: Any) -> int:
    return int(v.value) if isinstance(v, EntityProperty) else int(v or 0)


def lease_from_entity(e: Any) -> Lease:
    return Lease(e["PartitionKey"], e["RowKey"], e.get("day", ""), _int(e.get("grant")), _int(e.get("spent")),
                 _int(e.get("pending")), e.get("owner", ""), _dt(e.get("expires_at")), _dt(e.get("revoked_at")),
                 e.metadata.get("etag") if hasattr(e, "metadata") else None)


def lease_entity(lease: Lease) -> dict[str, Any]:
    return {"PartitionKey": lease.key_id, "RowKey": lease.slot, "kind": "lease", "day": lease.day,
            "grant": _i64(lease.grant), "spent": _i64(lease.spent), "pending": _i64(lease.pending),
            "owner": lease.owner, "expires_at": _iso(lease.expires_at), "revoked_at": _iso(lease.revoked_at)}


def op_write_lease(lease: Lease) -> Operation:
    """Create a new lease row, or replace one with If-Match on the version it was computed from."""
    if lease.etag is None:
        return ("create", lease_entity(lease))
    return ("update", lease_entity(lease),
            {"mode": UpdateMode.REPLACE, "etag": lease.etag, "match_condition": MatchConditions.IfNotModified})


def folded(c: Counters, lease: Lease) -> Counters:
    """The key counters with `lease` given back: its grant returns, its spent and pending join the key's."""
    c = replace(c, total_leased=c.total_leased - lease.grant, total_spent=c.total_spent + lease.spent,
                total_pending=c.total_pending + lease.pending)
    if lease.day == c.window_day:
        c = replace(c, window_leased=c.window_leased - lease.grant, window_spent=c.window_spent + lease.spent,
                    window_pending=c.window_pending + lease.pending)
    return c


def folded_all(key: KeyRecord, leases: list[Lease], day: str) -> Counters:
    """The key row's counters as of `day` with every lease in `leases` folded in."""
    c = current(key.counters, day)
    grant = spent = pending = w_grant = w_spent = w_pending = 0  # summed first: one `replace`, not two per lease
    for lease in leases:
        grant, spent, pending = grant + lease.grant, spent + lease.spent, pending + lease.pending
        if lease.day == c.window_day:
            w_grant, w_spent, w_pending = w_grant + lease.grant, w_spent + lease.spent, w_pending + lease.pending
    return replace(c, total_leased=c.total_leased - grant, total_spent=c.total_spent + spent,
                   total_pending=c.total_pending + pending, window_leased=c.window_leased - w_grant,
                   window_spent=c.window_spent + w_spent, window_pending=c.window_pending + w_pending)


def granted(c: Counters, cents: int) -> Counters:
    """Counters of a key row that has granted `cents` more to its leases (window and lifetime)."""
    return replace(c, window_leased=c.window_leased + cents, total_leased=c.total_leased + cents)


def read_partition(store: LedgerStore, key_id: str) -> tuple[KeyRecord | None, list[Lease]]:
    """The key row and every lease row (one query)."""
    key, leases = store.key_and_lease_entities(key_id)
    return (key_from_entity(key) if key is not None else None), [lease_from_entity(e) for e in leases]


def partition_counters(store: LedgerStore, key_id: str, day: str, key: KeyRecord | None = None) -> Counters:
    """The key's counters as of `day` with every lease folded in: what was really spent and is pending.

    Reads nothing more than `key` when the key row (as given) has no leases."""
    if key is None or key.counters.leases:
        key, leases = read_partition(store, key_id)
    else:
        leases = []
    if key is None:
        return Counters(window_day=day)
    return folded_all(key, leases, day)


def with_leases(store: LedgerStore, key: KeyRecord, day: str) -> KeyRecord:
    """`key` with the partition's counters (for describe/list/spend: leases hold part of the truth)."""
    if not key.counters.leases:
        return key
    return replace(key, counters=partition_counters(store, key.key_id, day, key))


def room_of(key: KeyRecord, leases: list[Lease], day: str, *, banded: bool = False) -> int:
    """Headroom of the whole partition on `day`: the key row's plus every lease's (`banded`: only
    below the next unfired alert threshold, proxy/alert_bands.py)."""
    total = folded_all(key, leases, day)
    room = headroom(replace(key, counters=total), day)
    band = alert_bands.band_room(key, total, day, granted=False) if banded else None
    return room if band is None else min(room, band)


def key_room(key: KeyRecord, counters: Counters, day: str) -> int:
    """What the key row may grant or reserve on `day`: its headroom, below the next unfired alert
    threshold (proxy/alert_bands.py: room past a threshold opens only when it fires)."""
    room = headroom(replace(key, counters=counters), day)
    band = alert_bands.band_room(key, current(counters, day), day)
    return room if band is None else min(room, band)


def first_leases(key: KeyRecord, day: str, unit: int, rounding: int = 0) -> tuple[Counters, list[Lease]]:
    """The key row's headroom on `day` (below the next unfired alert threshold) spread over S new
    lease rows of at least `unit` cents each (S ≤ `MAX_LEASES`): the key row's new counters and the
    rows to create with it."""
    room = key_room(key, key.counters, day)
    slots = max(1, min(MAX_LEASES, room // max(1, unit)))
    shares = split(room, slots, rounding)
    counters = replace(current(key.counters, day), leases=slots)
    counters = granted(counters, sum(shares))
    return counters, [Lease(key.key_id, f"{LEASE_PREFIX}{n:02d}", day, shares[n]) for n in range(slots)]


def split(room: int, n: int, unit: int) -> list[int]:
    """`room` as `n` near-equal shares in whole multiples of `unit` (the first shares one unit more
    when they do not divide evenly; with less than one unit per share, a unit each to the first
    ones and nothing to the rest), so no lease is left holding a fragment that a charge of that
    size cannot use; what is left over, less than one unit, stays with the caller (the key row)."""
    n = max(1, n)
    if unit <= 0:
        return [room // n] * n
    units, extra = divmod(room // unit, n)
    return [(units + (1 if i < extra else 0)) * unit for i in range(n)]


def insert_key_with_leases(store: LedgerStore, key: KeyRecord, day: str) -> KeyRecord:
    """Create a key row together with its lease rows for `day`, in ONE transaction."""
    counters, leases = first_leases(key, day, ISSUE_LEASE_CENTS, LEASE_ROUNDING)
    key = replace(key, counters=counters)
    etags = store.submit([("create", key_to_entity(key)), *[op_write_lease(x) for x in leases]])
    return replace(key, etag=etags[0])


__all__ = ["ISSUE_LEASE_CENTS", "LEASE_UNITS", "MAX_LEASES", "Lease", "first_leases", "folded", "folded_all", "granted",
           "insert_key_with_leases", "key_room", "lease_entity", "lease_from_entity", "op_write_lease", "partition_counters",
           "read_partition", "room_of", "split", "with_leases"]
