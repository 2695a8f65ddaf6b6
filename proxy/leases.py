"""Headroom leases: the cap of one key spread over many instances without a shared hot row.

`GroupLedger` batches the calls of ONE process on the key row; instances meet only at that
row's If-Match, which collapses when a fan-out spreads over many instances (docs/ledger.md,
"The cap across many instances"). Here each instance reserves against its own *lease row* in
the key's partition, which no other instance writes in the steady state:

- The vault issues a key with its lease rows (`lease-00` … ; S ≤ `MAX_LEASES`; one transaction,
  proxy/lease_rows.py). A key issued without them gets them from its first reservation: ONE
  If-Match transaction on the key row moves its headroom into S lease rows. Either way the key
  row counts what it granted (`window_leased`, `total_leased`, `leases`).
- An instance *claims* an unowned lease (or one whose owner let it expire; found by point reads
  of a few slots, proxy/lease_room.py) and then commits its group-committed batches with
  If-Match on that row: the reservation and its idempotency record create in one transaction,
  exactly as on the key row, one round trip.
- A lease that runs short takes headroom from other leases in the same transaction as the
  reservation (which ones: proxy/lease_room.py), so leases shrink as the cap runs low. Moving
  headroom between leases leaves the key row alone.
- A batch's leader returns as soon as its own call is done: batch-mates still short of room go
  back to the head of the queue and one of them leads their next round, so a committed
  reservation never waits for another's search for room, its back-off or its refusal.
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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from core.errors import SpendgateError
from proxy import alert_bands
from proxy.lease_room import FRESH_SECONDS, MAX_VICTIMS, RoomSearch, _LeaseLane
from proxy.lease_rows import (
    LEASE_UNITS,
    Lease,
    first_leases,
    folded,
    key_room,
    lease_from_entity,
    op_write_lease,
    partition_counters,
    read_partition,
    with_leases,
)
from proxy.ledger import (
    _MOVES,
    MAX_BATCH_OPS,
    GroupLedger,
    _copy_error,
    _Intent,
    _Lane,
    _utcnow,
    current,
)
from proxy.store import Conflict, KeyRecord, LedgerStore, Operation, op_update_counters

log = logging.getLogger("spendgate.leases")
LEASE_TTL = timedelta(seconds=30)  # another instance may claim a lease this long after its owner's last write
IDLE_RETURN_SECONDS = 5.0  # a lease unused this long is handed back
LEDGER_OPS = MAX_VICTIMS + 2  # key row + victims + own lease, before the batch's own ops


class LeaseLedger(RoomSearch, GroupLedger):
    """Group commit per key on this instance's own lease row instead of the shared key row.

    Same interface and the same promises as `GroupLedger` (see docs/ledger.md); the callers'
    `key` may be stale (KnownKeys): it is only an If-Match base.
    """

    def __init__(self, store: LedgerStore, *, clock: Callable[[], datetime] = _utcnow, owner: str | None = None,
                 ttl: timedelta = LEASE_TTL, idle_return: float = IDLE_RETURN_SECONDS, max_rounds: int = 24,
                 reaper: bool = True) -> None:
        super().__init__(store, clock=clock, max_rounds=max_rounds, max_ops=MAX_BATCH_OPS - LEDGER_OPS)
        self.owner = owner or uuid.uuid4().hex[:16]  # written on the leases this instance claims
        self.ttl = ttl
        self.idle_return = idle_return
        self.key_commits = 0  # transactions that wrote the key row (for benchmarks)
        self.partition_reads = 0  # queries of the key row and every lease (for benchmarks)
        self.reads_by: dict[str, int] = {}  # the same, by why they were made
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
        return _LeaseLane(self.owner)

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
            if lease is not None and lease.owner == lane.owner:
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
                if pending and lane.leader is not None and lane.leader.finished:
                    # our caller's call is done: it returns now, and one of the rest leads their next round
                    # (a committed reservation is not held up by a batch-mate waiting for room, or refused)
                    with lane.lock:
                        lane.queue.extendleft(reversed(pending))
                    pending.clear()
                    return
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
            self._adopt(lane, key, day, now)
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
        fresh = not lane.others_stale and time.monotonic() - lane.read_at < FRESH_SECONDS
        if short and mine is not None and fresh:  # take from the others as just read (no reads here)
            need = sum(i.amount for i in short) - room
            unit = min(i.amount for i in short)
            counters, gained, victims, key_took = self._take_room(lane, key, counters, mine, day, need, unit, now)
            key_dirty = key_dirty or key_took
            mine = replace(mine, grant=mine.grant + gained)
            room += gained
            for intent in list(short):
                if intent.amount <= room:
                    short.remove(intent)
                    admitted.append(intent)
                    room -= intent.amount
        if short and not admitted and not moves and not gained:
            if lane.backoff > 0 and time.monotonic() - lane.read_at < lane.read_gap:
                self._wait(lane)  # the room is with owners using it (as last read): let them, reading little,
                if lane.lease is not None and lane.near_edge:  # then, near a band's edge, one
                    self._reread_own(lane)  # point read of our own lease: the commit that fires an alert
                return  # threshold grants the next band's room to the leases in use (mid-band nothing lands there)
            self._pool(lane, pending, short, day, now)  # read the partition: room to take, or a refusal
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
            if mine.claimable(lane.owner, now):  # ours (or free to take): extend it
                mine = replace(mine, owner=lane.owner, expires_at=now + self.ttl)
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

    def _after_conflict(self, lane: _LeaseLane, pending: list[_Intent], exc: Conflict, n_ledger: int,
                        owners: list[_Intent], key_dirty: bool, victims: list[Lease], lease_written: bool) -> None:
        if exc.index is not None and exc.index >= n_ledger and exc.index - n_ledger < len(owners):
            offender = owners[exc.index - n_ledger]  # its own op failed: it alone takes the Conflict path
            pending.remove(offender)
            offender.finish(error=Conflict(str(exc), exc.index))
            return
        if exc.index is not None and exc.index < n_ledger:  # re-read just the row that moved (a point read)
            if key_dirty and exc.index == 0:
                self._count_point('key_conflict')
                lane.known = self.store.read_key(lane.key_id)
                if lane.known is None:
                    raise Conflict("the key is gone")
            elif lease_written and exc.index == n_ledger - 1:
                self._reread_own(lane)
            else:  # that lease moved, so others may have too: the next shortage reads them all (`_pool`),
                lane.others_stale = True  # after a pause: its owner is using it, or another taker won it,
                self._wait(lane)  # and reading again at once mostly meets the same race (a storm at a band's edge)
            return
        before = (lane.known.etag if lane.known else None, lane.lease.etag if lane.lease else None)
        self._refresh(lane, "conflict")
        after = (lane.known.etag if lane.known else None, lane.lease.etag if lane.lease else None)
        if exc.index is None and before == after and not victims:
            for intent in pending:  # storage did not say which op failed, and our rows did not change
                intent.finish(error=Conflict("the batch failed"))
            pending.clear()

    def _reread_own(self, lane: _LeaseLane) -> None:
        """Our lease moved (another instance took room from it, claimed it, or a revoke stamped it)."""
        assert lane.lease is not None
        self._count_point('own')
        row = self.store.read_row(lane.key_id, lane.lease.slot)
        lease = lease_from_entity(row) if row is not None else None
        lane.lease = None
        if lease is None:
            return
        if lease.claimable(lane.owner, self.clock()):
            lane.lease = replace(lease, owner=lane.owner)
        else:  # someone else claimed it first: the next round picks another
            lane.others[lease.slot] = lease

    def _create_leases(self, lane: _LeaseLane, key: KeyRecord, day: str, amount: int) -> None:
        """Spread the key row's headroom over S new lease rows (one transaction, If-Match on the key row)."""
        counters, leases = first_leases(key, day, amount * LEASE_UNITS, amount)
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in leases]])
            self.key_commits += 1
        except Conflict:
            pass  # another instance did it first, or our row was stale
        self._refresh(lane, "create")

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
        room = key_room(key, counters, day)  # below the next unfired alert threshold
        share = room // max(1, len(leases))
        counters = replace(counters, window_leased=share * len(leases), total_leased=counters.total_leased + share * len(leases))
        fresh = [replace(x, day=day, grant=share, spent=0, pending=0) for x in leases]
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in fresh]])
            self.key_commits += 1
        except Conflict:
            pass
        self._refresh(lane, "rollover")

__all__ = ["Lease", "LeaseLedger", "folded", "partition_counters", "read_partition", "with_leases"]
