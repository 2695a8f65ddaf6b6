"""Headroom leases: the cap of one key spread over many instances without a shared hot row.

`GroupLedger` batches the calls of ONE process on the key row; instances meet only at that
row's If-Match, which collapses when a fan-out spreads over many instances (docs/ledger.md,
"The cap across many instances"). Here each instance reserves against its own *lease row* in
the key's partition, which no other instance writes in the steady state:

- The first reservation that finds no lease rows moves the key's headroom into S lease rows
  (`lease-00` … ; S ≤ `MAX_LEASES`) in ONE If-Match transaction on the key row: the key row
  counts what it granted (`window_leased`, `total_leased`, `leases`).
- An instance *claims* an unowned lease (or one whose owner let it expire) and then commits
  its group-committed batches with If-Match on that row: the reservation and its idempotency
  record create in one transaction, exactly as on the key row, one round trip.
- A lease that runs short takes headroom from other leases in the same transaction as the
  reservation: all of an unowned one's, half of an owned one's (so leases shrink as the cap
  runs low). Moving headroom between leases leaves the key row alone.
- Settles and releases land on the instance's own lease (pending is fungible: the partition's
  sum is what counts, see `proxy.ledger.settled`), on the key row otherwise.
- A lease unused for `IDLE_RETURN_SECONDS`, or held by a process that stops (`close`), is
  handed back (owner cleared); a killed process's lease can be claimed by another instance once
  `LEASE_TTL` has passed since its last write. Claiming, shrinking and the revoke all change
  the row's ETag, so a slow former owner's next write fails its If-Match.
- A new UTC day folds every lease's counters into the key row and grants the new day's
  headroom afresh, in one transaction.

Invariant, at every commit: the key row's spent + pending + leased ≤ cap and each lease's
spent + pending ≤ its grant, so the partition's spent + pending ≤ cap. A reservation is
refused only when a consistent read of the partition (two identical collects of the key row
and every lease row) shows less headroom than it needs.
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import EdmType, EntityProperty, UpdateMode

from core.errors import SpendgateError
from proxy import alert_bands
from proxy.ledger import (
    _MOVES,
    MAX_BATCH_OPS,
    GroupLedger,
    _copy_error,
    _Intent,
    _Lane,
    _utcnow,
    cap_exceeded,
    current,
    headroom,
)
from proxy.store import LEASE_PREFIX, Conflict, Counters, KeyRecord, LedgerStore, Operation, op_update_counters

log = logging.getLogger("spendgate.leases")
MAX_LEASES = 64  # lease rows per key: a revoke (key row + every lease) and a day's rollover must fit one transaction
LEASE_UNITS = 8  # a lease starts with room for at least this many reservations of the first amount
LEASE_TTL = timedelta(seconds=30)  # another instance may claim a lease this long after its owner's last write
IDLE_RETURN_SECONDS = 5.0  # a lease unused this long is handed back
MAX_VICTIMS = 6  # leases one transaction may take headroom from
LEDGER_OPS = MAX_VICTIMS + 2  # key row + victims + own lease, before the batch's own ops
BUSY_SECONDS = 0.5  # an owner that wrote its lease this recently is busy with it
SNAPSHOT_TRIES = 3  # collects of the partition before a refusal is given up for this round


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


def read_partition(store: LedgerStore, key_id: str) -> tuple[KeyRecord | None, list[Lease]]:
    """The key row and every lease row (one query)."""
    from proxy.store import key_from_entity

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
    c = current(key.counters, day)
    for lease in leases:
        c = folded(c, lease)
    return c


def with_leases(store: LedgerStore, key: KeyRecord, day: str) -> KeyRecord:
    """`key` with the partition's counters (for describe/list/spend: leases hold part of the truth)."""
    if not key.counters.leases:
        return key
    return replace(key, counters=partition_counters(store, key.key_id, day, key))


class _LeaseLane(_Lane):
    """A key's lane in this process: its queue, the key row and the leases as last seen."""

    def __init__(self) -> None:
        super().__init__()
        self.lease: Lease | None = None  # the lease this process reserves against
        self.others: dict[str, Lease] = {}  # the other leases as last read (If-Match bases for taking room)
        self.others_stale = False  # taking room from one of them failed: read them all before trying again
        self.backoff = 0.0  # seconds to wait before the next read of the partition while the room is with others
        self.last_used = time.monotonic()
        self.key_id = ""


class LeaseLedger(GroupLedger):
    """Group commit per key on this instance's own lease row instead of the shared key row.

    Same interface and the same promises as `GroupLedger` (see docs/ledger.md); the callers'
    `key` may be stale (KnownKeys): it is only an If-Match base.
    """

    def __init__(self, store: LedgerStore, *, clock: Callable[[], datetime] = _utcnow, owner: str | None = None,
                 ttl: timedelta = LEASE_TTL, idle_return: float = IDLE_RETURN_SECONDS, max_rounds: int = 24,
                 reaper: bool = True) -> None:
        super().__init__(store, clock=clock, max_rounds=max_rounds, max_ops=MAX_BATCH_OPS - LEDGER_OPS)
        self.owner = owner or uuid.uuid4().hex[:16]
        self.ttl = ttl
        self.idle_return = idle_return
        self.key_commits = 0  # transactions that wrote the key row (for benchmarks)
        self.partition_reads = 0  # queries of the key row and every lease (for benchmarks)
        self.conflicts = 0  # transactions that lost a race (for benchmarks)
        # Told (key, binding, percents) after a threshold's commit (proxy/alert_bands.py); must not block.
        self.on_threshold: Callable[[KeyRecord, alert_bands.Binding, list[int]], None] | None = None
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        if reaper:
            self._reaper = threading.Thread(target=self._reap, name="lease-reaper", daemon=True)
            self._reaper.start()

    @classmethod
    def for_process(cls, store: LedgerStore) -> LeaseLedger:
        """The process's ledger: it hands its leases back when the interpreter exits."""
        ledger = cls(store)
        atexit.register(ledger.close)
        return ledger

    def _new_lane(self) -> _Lane:
        return _LeaseLane()

    # --- giving leases back -------------------------------------------------------------
    def close(self) -> None:
        """Hand back every lease this process holds (the process is stopping)."""
        self._stop.set()
        for lane in list(self._lanes.values()):
            self._give_back(lane, idle_for=0.0)  # type: ignore[arg-type]

    def _reap(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_return / 2)):
            for lane in list(self._lanes.values()):
                self._give_back(lane, idle_for=self.idle_return)  # type: ignore[arg-type]

    def _give_back(self, lane: _LeaseLane, idle_for: float) -> None:
        with lane.lock:  # take the lead like a caller would, so no batch runs meanwhile
            if lane.leading or lane.queue or lane.lease is None or time.monotonic() - lane.last_used < idle_for:
                return
            lane.leading = True
        try:
            lease = lane.lease
            if lease is not None and lease.owner == self.owner:
                self.store.submit([op_write_lease(replace(lease, owner="", expires_at=None))])
            lane.lease = None
        except (Conflict, SpendgateError):
            lane.lease = None  # changed by someone else (taken, revoked): it is not ours to give any more
        finally:
            with lane.lock:
                if lane.queue:
                    lane.queue[0].wake.set()
                else:
                    lane.leading = False

    # --- the commit ---------------------------------------------------------------------
    def _commit(self, lane: _Lane, batch: list[_Intent]) -> None:
        assert isinstance(lane, _LeaseLane)
        lane.key_id = batch[0].key.key_id
        lane.last_used = time.monotonic()
        pending = sorted(batch, key=lambda i: i.action == "reserve")  # settles/releases first
        try:
            for _round in range(self.max_rounds):
                if not pending:
                    return
                self._round_on_leases(lane, pending)
            for intent in pending:
                intent.finish(error=Conflict("the key's rows are too contended"))
        except Exception as exc:  # storage down or a bug: fail every intent still waiting (closed)
            if not isinstance(exc, (SpendgateError, Conflict)):
                log.exception("lease commit failed for key_id=%s", lane.key_id)
            for intent in pending:
                if not intent.finished:
                    intent.finish(error=_copy_error(exc))
        finally:
            lane.last_used = time.monotonic()

    def _round_on_leases(self, lane: _LeaseLane, pending: list[_Intent]) -> None:
        """One decide-and-commit attempt; finishes what it can and leaves the rest in `pending`."""
        now = self.clock()
        key = lane.known or pending[0].key
        reserves = [i for i in pending if i.action == "reserve"]
        day = reserves[0].day if reserves else ""
        lease = lane.lease
        if reserves and (key.status(now) != "active" or (lease is not None and lease.revoked_at is not None)):
            for intent in reserves:  # revocation and expiry are final: the caller re-reads and says so
                pending.remove(intent)
                intent.finish(error=Conflict("the key is not active"))
            reserves = []
        past = [i for i in reserves if i.day < key.counters.window_day]
        for intent in past:  # a caller whose clock is behind the key's window (days only advance): fail
            pending.remove(intent)  # closed; its retry carries the day its clock says then
            intent.finish(error=Conflict("the key's window has moved to a later day"))
            reserves.remove(intent)
        day = reserves[0].day if reserves else ""
        if not pending:
            return
        if reserves and key.counters.leases == 0:
            self._create_leases(lane, key, day, reserves[0].amount)
            return
        if reserves and key.counters.window_day < day:
            self._roll_over(lane, day)
            return
        if reserves and (lease is None or lease.day != day):
            self._adopt(lane, day, now)
            if lane.lease is None or lane.lease.day != day:
                return
            lease = lane.lease
        today = [i for i in reserves if i.day == day]
        moves = [i for i in pending if i.action != "reserve"]
        self._decide_and_commit(lane, pending, key, lease, today, moves, day, now)

    def _decide_and_commit(self, lane: _LeaseLane, pending: list[_Intent], key: KeyRecord, lease: Lease | None,
                           today: list[_Intent], moves: list[_Intent], day: str, now: datetime) -> None:
        counters = key.counters
        key_dirty = False
        mine = lease
        for intent in moves:
            if mine is not None and intent.day == mine.day:
                mine = mine.moved(intent.action, intent.amount)
            else:
                counters = _MOVES[intent.action](counters, intent.amount, intent.day)
                key_dirty = True
        admitted: list[_Intent] = []
        short: list[_Intent] = []
        room = mine.room if mine is not None else 0
        for intent in today:
            if intent.amount <= room:
                admitted.append(intent)
                room -= intent.amount
            else:
                short.append(intent)
        victims: list[Lease] = []
        gained = 0
        if short and mine is not None:
            need = sum(i.amount for i in short) - room
            counters, gained, victims, key_took = self._take_room(lane, key, counters, mine, day, need, now)
            key_dirty = key_dirty or key_took
            mine = replace(mine, grant=mine.grant + gained)
            room += gained
            for intent in list(short):
                if intent.amount <= room:
                    short.remove(intent)
                    admitted.append(intent)
                    room -= intent.amount
        if short and not admitted and not moves and not gained:
            self._pool(lane, pending, short, day, now)
            return
        if mine is not None:
            for intent in admitted:
                mine = mine.moved("reserve", intent.amount)
        ops: list[Operation] = []
        if key_dirty:
            ops.append(op_update_counters(key, counters))
        ops += [op_write_lease(v) for v in victims]
        lease_written = mine is not None and (admitted or mine != lease)
        if lease_written:
            assert mine is not None
            if mine.claimable(self.owner, now):  # ours (or free to take): extend it
                mine = replace(mine, owner=self.owner, expires_at=now + self.ttl)
            # else shared with its live owner: written with If-Match, its owner and expiry left alone
            ops.append(op_write_lease(mine))
        n_ledger = len(ops)
        owners: list[_Intent] = []
        done = admitted + [i for i in moves]
        for intent in done:
            ops += intent.extra
            owners += [intent] * len(intent.extra)
        if not ops:
            return
        try:
            etags = self.store.submit(ops)
        except Conflict as exc:
            self.conflicts += 1
            self._after_conflict(lane, pending, exc, n_ledger, owners, key_dirty, victims, lease_written)
            return
        self.commits += 1
        lane.backoff = 0.0
        if key_dirty:
            self.key_commits += 1
            lane.known = replace(key, counters=counters, etag=etags[0])
        for i, v in enumerate(victims):
            lane.others[v.slot] = replace(v, etag=etags[int(key_dirty) + i])
        if lease_written:
            assert mine is not None
            lane.lease = replace(mine, etag=etags[n_ledger - 1])
        head = etags[0] if etags else ""
        pos = n_ledger
        for intent in done:
            n = len(intent.extra)
            pending.remove(intent)
            intent.finish([head, *etags[pos:pos + n]])
            pos += n

    def _take_room(self, lane: _LeaseLane, key: KeyRecord, counters: Counters, mine: Lease, day: str, need: int,
              now: datetime) -> tuple[Counters, int, list[Lease], bool]:
        """Headroom for `need` more cents: first what the key row still holds, then other leases'
        (all of an unowned one's, half of an owned one's, at least what is needed)."""
        gained, victims, key_took = 0, [], False
        key_room = self._key_room(key, counters, day)
        if key_room > 0:
            took = min(key_room, max(need, key_room // max(1, key.counters.leases)))
            counters = replace(current(counters, day), window_leased=current(counters, day).window_leased + took,
                               total_leased=counters.total_leased + took)
            gained, key_took = took, True
        candidates = [] if lane.others_stale else [v for v in lane.others.values()
                      if v.slot != mine.slot and v.day == day and self._eligible(v, need, now)]
        # unowned leases first, in random order (instances looking at once pick different ones),
        # then the roomiest owned ones
        candidates.sort(key=lambda v: (0, random.random()) if v.claimable(self.owner, now) else (1, -v.room))
        for v in candidates:
            if gained >= need or len(victims) >= MAX_VICTIMS:
                break
            if len(lane.others) > 1:  # others may have written it since we read them all: a point read first
                row = self.store.read_row(lane.key_id, v.slot)
                if row is None:
                    lane.others.pop(v.slot, None)
                    continue
                v = lane.others[v.slot] = lease_from_entity(row)
                if not self._eligible(v, need - gained, now):
                    continue
            take = v.room if v.claimable(self.owner, now) else min(v.room, max(need - gained, v.room // 2))
            victims.append(replace(v, grant=v.grant - take))
            gained += take
        return counters, gained, victims, key_took

    def _eligible(self, victim: Lease, need: int, now: datetime) -> bool:
        """May we take room from `victim`? Free or expired leases, idle owners' and roomy ones, yes. An
        owner busy with its last few reservations is left alone: taking from it would mostly lose the
        race to its own next write, and it is about to use that room anyway."""
        if victim.room <= 0 or victim.revoked_at is not None:
            return False
        if victim.claimable(self.owner, now) or victim.room >= 4 * need:
            return True
        last_write = (victim.expires_at or now) - self.ttl
        return now - last_write > timedelta(seconds=BUSY_SECONDS)

    def _after_conflict(self, lane: _LeaseLane, pending: list[_Intent], exc: Conflict, n_ledger: int,
                        owners: list[_Intent], key_dirty: bool, victims: list[Lease], lease_written: bool) -> None:
        if exc.index is not None and exc.index >= n_ledger and exc.index - n_ledger < len(owners):
            offender = owners[exc.index - n_ledger]  # its own op failed: it alone takes the Conflict path
            pending.remove(offender)
            offender.finish(error=Conflict(str(exc), exc.index))
            return
        if exc.index is not None and exc.index < n_ledger:  # re-read just the row that moved (a point read)
            if key_dirty and exc.index == 0:
                lane.known = self.store.read_key(lane.key_id)
                if lane.known is None:
                    raise Conflict("the key is gone")
            elif lease_written and exc.index == n_ledger - 1:
                self._reread_own(lane)
            else:  # that lease moved, so others may have too: the next shortage reads them all (`_pool`)
                lane.others_stale = True
            return
        before = (lane.known.etag if lane.known else None, lane.lease.etag if lane.lease else None)
        self._refresh(lane)
        after = (lane.known.etag if lane.known else None, lane.lease.etag if lane.lease else None)
        if exc.index is None and before == after and not victims:
            for intent in pending:  # storage did not say which op failed, and our rows did not change
                intent.finish(error=Conflict("the batch failed"))
            pending.clear()

    def _reread_own(self, lane: _LeaseLane) -> None:
        """Our lease moved (another instance took room from it, claimed it, or a revoke stamped it)."""
        assert lane.lease is not None
        row = self.store.read_row(lane.key_id, lane.lease.slot)
        lease = lease_from_entity(row) if row is not None else None
        lane.lease = None
        if lease is None:
            return
        if lease.claimable(self.owner, self.clock()):
            lane.lease = replace(lease, owner=self.owner)
        else:  # someone else claimed it first: the next round picks another
            lane.others[lease.slot] = lease

    def _refresh(self, lane: _LeaseLane) -> None:
        """Re-read the partition: the key row, our lease (if still ours) and the others."""
        key, leases = read_partition(self.store, lane.key_id)
        self.partition_reads += 1
        if key is None:
            raise Conflict("the key is gone")
        self._learn(lane, key, leases)

    def _learn(self, lane: _LeaseLane, key: KeyRecord, leases: list[Lease]) -> None:
        lane.known = key
        lane.others_stale = False
        ours = lane.lease.slot if lane.lease is not None else None
        lane.lease = None
        lane.others = {}
        for lease in leases:
            if lease.slot == ours and lease.owner == self.owner:
                lane.lease = lease
            else:
                lane.others[lease.slot] = lease

    # --- lease rows: creation, adoption, the new day, the pool ---------------------------
    def _create_leases(self, lane: _LeaseLane, key: KeyRecord, day: str, amount: int) -> None:
        """Spread the key row's headroom over S new lease rows (one transaction, If-Match on the key row).

        Only the room below the next unfired alert threshold is spread (proxy/alert_bands.py)."""
        room = self._key_room(key, key.counters, day)
        slots = max(1, min(MAX_LEASES, room // max(1, amount * LEASE_UNITS)))
        share = room // slots
        counters = replace(current(key.counters, day), leases=slots)
        counters = replace(counters, window_leased=counters.window_leased + share * slots,
                           total_leased=counters.total_leased + share * slots)
        leases = [Lease(key.key_id, f"{LEASE_PREFIX}{n:02d}", day, share) for n in range(slots)]
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in leases]])
            self.key_commits += 1
        except Conflict:
            pass  # another instance did it first, or our row was stale
        self._refresh(lane)

    def _adopt(self, lane: _LeaseLane, day: str, now: datetime) -> None:
        """Pick a lease for `day` (from the leases as last read, else as read now)."""
        if not any(x.day == day for x in lane.others.values()):
            self._refresh(lane)
            if lane.lease is not None and lane.lease.day == day:
                return
        self._adopt_from(lane, day, now)

    def _roll_over(self, lane: _LeaseLane, day: str) -> None:
        """A new UTC day: fold every lease into the key row and grant the new day's headroom (one transaction)."""
        key, leases = read_partition(self.store, lane.key_id)
        if key is None:
            raise Conflict("the key is gone")
        if key.counters.window_day >= day:
            self._learn(lane, key, leases)
            return
        counters = current(key.counters, key.counters.window_day)
        for lease in leases:
            counters = folded(counters, lease)
        counters = replace(current(counters, day), leases=len(leases))
        room = self._key_room(key, counters, day)
        share = room // max(1, len(leases))
        counters = replace(counters, window_leased=share * len(leases), total_leased=counters.total_leased + share * len(leases))
        fresh = [replace(x, day=day, grant=share, spent=0, pending=0) for x in leases]
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in fresh]])
            self.key_commits += 1
        except Conflict:
            pass
        self._refresh(lane)

    def _pool(self, lane: _LeaseLane, pending: list[_Intent], short: list[_Intent], day: str, now: datetime) -> None:
        """No room within reach: read the partition consistently; refuse what the whole of it cannot hold.

        The room within reach stops at the next unfired alert threshold (proxy/alert_bands.py): when a
        consistent read shows the reservation needs room past it, the threshold fires here (one
        If-Match on the key row) and the next round takes the room."""
        key, leases = read_partition(self.store, lane.key_id)
        self.partition_reads += 1
        if key is None:
            raise Conflict("the key is gone")
        room = self._room_of(key, leases, day)
        if short[0].amount > self._room_of(key, leases, day, banded=True):
            # a refusal or a threshold needs a consistent read: collect again until two agree
            key, leases, consistent = self._snapshot(lane.key_id, (key, leases))
            room = self._room_of(key, leases, day)
            if not consistent:
                self._learn(lane, key, leases)
                self._wait(lane)
                return  # the rows kept changing: the next round tries again with what was read last
            if self._fire_thresholds(lane, key, leases, day, short[0].amount, room):
                return  # the cap is open past the threshold now: the next round takes the room
        self._learn(lane, key, leases)
        if lane.lease is None:
            self._adopt_from(lane, day, now)
        need = short[0].amount
        if short[0].amount <= room and not any(self._eligible(x, need, now) for x in lane.others.values()
                                               if x.day == day) and self._key_room(key, key.counters, day) < need:
            self._wait(lane)  # the room is with owners using it: let them, then look again
        for intent in short:
            # Each is judged against the whole room on its own: the others in the batch have not
            # committed, and a refusal must mean "there was no room for this one" (they race for it
            # in the next round; whoever loses sees the room gone in a read of its own).
            if intent.amount > room:
                pending.remove(intent)
                intent.finish(error=cap_exceeded(intent.amount, room))

    @staticmethod
    def _wait(lane: _LeaseLane) -> None:
        """Back off before reading the partition again (50 ms doubling to 400 ms, jittered): the
        instances still holding room are using it, and every read slows everyone's storage."""
        lane.backoff = min(0.4, max(0.05, lane.backoff * 2))
        time.sleep(random.uniform(lane.backoff / 2, lane.backoff))

    def _adopt_from(self, lane: _LeaseLane, day: str, now: datetime) -> None:
        """Claim an unowned (or expired) lease, at random among those with room so that instances
        starting together pick different ones; with none free, share the roomiest (it is written
        with If-Match like our own; claiming only changes who may hand it back)."""
        todays = [x for x in lane.others.values() if x.day == day]
        if not todays:
            return
        free = [x for x in todays if x.claimable(self.owner, now)]
        roomy = [x for x in free if x.room > 0]
        pick = random.choice(roomy) if roomy else max(free or todays, key=lambda x: x.room)
        lane.lease = replace(pick, owner=self.owner) if free else pick
        lane.others.pop(pick.slot, None)

    @staticmethod
    def _room_of(key: KeyRecord, leases: list[Lease], day: str, *, banded: bool = False) -> int:
        """Headroom of the whole partition on `day`: the key row's plus every lease's (`banded`: only
        below the next unfired alert threshold, proxy/alert_bands.py)."""
        total = current(key.counters, day)
        for lease in leases:
            total = folded(total, lease)
        room = headroom(replace(key, counters=total), day)
        band = alert_bands.band_room(key, total, day, granted=False) if banded else None
        return room if band is None else min(room, band)

    @staticmethod
    def _key_room(key: KeyRecord, counters: Counters, day: str) -> int:
        """What the key row may grant or reserve on `day`: its headroom, below the next unfired threshold."""
        room = headroom(replace(key, counters=counters), day)
        band = alert_bands.band_room(key, current(counters, day), day)
        return room if band is None else min(room, band)

    def _fire_thresholds(self, lane: _LeaseLane, key: KeyRecord, leases: list[Lease], day: str, need: int,
                         true_room: int) -> bool:
        """On a consistent read: commit the thresholds the next reservation crosses (If-Match on the key
        row as read), then tell `on_threshold`. True when the band moved (re-read, try again)."""
        total = current(key.counters, day)
        for lease in leases:
            total = folded(total, lease)
        crossing = alert_bands.to_fire(key, total, day, need, true_room)
        if not crossing:
            return False
        b = alert_bands.binding(key, total, day)
        try:
            self.store.submit([alert_bands.op_mark_fired(key, b.window, set(crossing))])
            self.key_commits += 1
        except Conflict:
            self._refresh(lane)
            return True  # someone else changed the key row first (maybe the same marker): look again
        if self.on_threshold is not None:
            try:  # usage as of the crossing: with the reservation that reaches it (unless the cap refuses it)
                self.on_threshold(key, replace(b, used=b.used + need) if need <= true_room else b, crossing)
            except Exception:  # an alert never fails the ledger
                log.exception("threshold alert for key_id=%s failed", key.key_id)
        self._refresh(lane)
        return need <= true_room

    def _snapshot(self, key_id: str, first: tuple[KeyRecord, list[Lease]]) -> tuple[KeyRecord, list[Lease], bool]:
        """The partition, and whether the read is consistent: two identical collects in a row (same
        ETags) mean every row held what was read at one instant between them (a double collect;
        lease rows are only added or removed together with a key row change)."""
        key, leases = first
        last: tuple[Any, ...] | None = (key.etag, tuple(sorted((x.slot, x.etag) for x in leases)))
        for _ in range(SNAPSHOT_TRIES):
            key, leases = read_partition(self.store, key_id)
            self.partition_reads += 1
            if key is None:
                raise Conflict("the key is gone")
            sig = (key.etag, tuple(sorted((x.slot, x.etag) for x in leases)))
            if sig == last:
                return key, leases, True
            last = sig
        return key, leases, False


__all__ = ["Lease", "LeaseLedger", "folded", "partition_counters", "read_partition", "with_leases"]
