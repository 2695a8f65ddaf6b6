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
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from core.errors import SpendgateError
from proxy.lease_rows import (
    LEASE_UNITS,
    Lease,
    first_leases,
    folded,
    lease_from_entity,
    op_write_lease,
    partition_counters,
    read_partition,
    room_of,
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
    cap_exceeded,
    current,
    headroom,
)
from proxy.store import LEASE_PREFIX, Conflict, Counters, KeyRecord, LedgerStore, Operation, op_update_counters

log = logging.getLogger("spendgate.leases")
LEASE_TTL = timedelta(seconds=30)  # another instance may claim a lease this long after its owner's last write
IDLE_RETURN_SECONDS = 5.0  # a lease unused this long is handed back
MAX_VICTIMS = 6  # leases one transaction may take headroom from
LEDGER_OPS = MAX_VICTIMS + 2  # key row + victims + own lease, before the batch's own ops
BUSY_SECONDS = 0.5  # an owner that wrote its lease this recently is busy with it
SNAPSHOT_TRIES = 3  # collects of the partition before a refusal is given up for this round
PROBES = 3  # point reads of lease slots an instance without a lease tries before it reads the whole partition
TAKE_READS = 2  # point reads per attempt to take room that find a lease with nothing to take
READ_SPACING = 0.03  # seconds between a dry lane's reads of the partition, per instance owning a lease (the
READ_GAP_MIN, READ_GAP_MAX = 0.1, 1.5  # fleet's reads stay ~30/s however many instances wait), within these
RECHECK_SECONDS = 1.0  # an owned lease read short of room is not read again for this long (nor trusted longer)


class _LeaseLane(_Lane):
    """A key's lane in this process: its queue, the key row and the leases as last seen."""

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner  # written on the lease this lane claims
        self.lease: Lease | None = None  # the lease this process reserves against
        self.others: dict[str, Lease] = {}  # the other leases as last read (If-Match bases for taking room)
        self.others_stale = False  # taking room from one of them failed: read them all before trying again
        self.backoff = 0.0  # seconds to wait before the next read of the partition while the room is with others
        self.seen: dict[str, datetime] = {}  # when each other lease was last read
        self.read_gap = 0.0  # seconds between reads of the whole partition while nothing is within reach
        self.read_at = 0.0  # when the whole partition was last read (monotonic)
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
        self.owner = owner or uuid.uuid4().hex[:16]  # written on the leases this instance claims
        self.ttl = ttl
        self.idle_return = idle_return
        self.key_commits = 0  # transactions that wrote the key row (for benchmarks)
        self.partition_reads = 0  # queries of the key row and every lease (for benchmarks)
        self.reads_by: dict[str, int] = {}  # the same, by why they were made
        self.conflicts = 0  # transactions that lost a race (for benchmarks)
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
            if time.monotonic() - lane.read_at < lane.read_gap:
                self._wait(lane)  # the room is with owners using it (as last read): let them, reading little
                return
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

    def _take_room(self, lane: _LeaseLane, key: KeyRecord, counters: Counters, mine: Lease, day: str, need: int,
              now: datetime) -> tuple[Counters, int, list[Lease], bool]:
        """Headroom for `need` more cents: first what the key row still holds, then other leases'
        (all of an unowned one's, half of an owned one's, at least what is needed)."""
        gained, victims, key_took = 0, [], False
        key_room = headroom(replace(key, counters=counters), day)
        if key_room > 0:
            took = min(key_room, max(need, key_room // max(1, key.counters.leases)))
            counters = replace(current(counters, day), window_leased=current(counters, day).window_leased + took,
                               total_leased=counters.total_leased + took)
            gained, key_took = took, True
        candidates = [] if lane.others_stale else [v for v in lane.others.values()
                      if v.slot != mine.slot and v.day == day and self._eligible(lane, v, need, now)
                      and not self._seen_busy(lane, v, need, now)]
        # unowned leases first, in random order (instances looking at once pick different ones),
        # then the roomiest owned ones
        # (owned ones by room with some randomness: takers that read the partition at once spread out)
        candidates.sort(key=lambda v: (0, random.random()) if v.claimable(lane.owner, now)
                        else (1, -v.room * random.uniform(0.5, 1.0)))
        wasted = 0
        for v in candidates:
            if gained >= need or len(victims) >= MAX_VICTIMS or wasted >= TAKE_READS:
                break  # (too many reads of rows with nothing to take: the rest next round, after a pause)
            if len(lane.others) > 1:  # others may have written it since we read them all: a point read first
                row = self.store.read_row(lane.key_id, v.slot)
                if row is None:
                    lane.others.pop(v.slot, None)
                    wasted += 1
                    continue
                v = lane.others[v.slot] = lease_from_entity(row)
                lane.seen[v.slot] = now
                if not self._eligible(lane, v, need - gained, now):
                    wasted += 1
                    continue
            take = v.room if v.claimable(lane.owner, now) else min(v.room, max(need - gained, v.room // 2))
            victims.append(replace(v, grant=v.grant - take))
            gained += take
        if gained < need:  # not enough yet: keep only what free and idle leases give (safe progress), never
            kept = [v for v in victims if self._idle(lane, lane.others[v.slot], now)]  # live owners' fragments:
            gained -= sum(lane.others[v.slot].grant - v.grant for v in victims if v not in kept)  # two short
            victims = kept  # instances would pass them back and forth
        return counters, gained, victims, key_took

    def _idle(self, lane: _LeaseLane, victim: Lease, now: datetime) -> bool:
        """Free, expired, or not written by its owner for `BUSY_SECONDS`."""
        last_write = (victim.expires_at or now) - self.ttl
        return victim.claimable(lane.owner, now) or now - last_write > timedelta(seconds=BUSY_SECONDS)

    def _eligible(self, lane: _LeaseLane, victim: Lease, need: int, now: datetime) -> bool:
        """May we take room from `victim`? Free or expired leases, idle owners' and roomy ones, yes; and
        a fragment (less than we need: its owner is likely short too, and the last cents of a cap are
        such fragments, one per lease). An owner busy with its last few reservations is left alone:
        taking from it would mostly lose the race to its own next write, and it is about to use that
        room anyway."""
        if victim.room <= 0 or victim.revoked_at is not None:
            return False
        if victim.claimable(lane.owner, now) or victim.room >= 4 * need or victim.room < need:
            return True
        last_write = (victim.expires_at or now) - self.ttl
        return now - last_write > timedelta(seconds=BUSY_SECONDS)

    def _seen_busy(self, lane: _LeaseLane, victim: Lease, need: int, now: datetime) -> bool:
        """Was `victim` short of room and its owner busy with it (wrote it just before) when we read
        it, so recently that reading it again would most likely show the same?"""
        seen = lane.seen.get(victim.slot)
        if seen is None or victim.claimable(lane.owner, now) or not need <= victim.room < 4 * need:
            return False
        last_write = (victim.expires_at or seen) - self.ttl
        return now - seen < timedelta(seconds=RECHECK_SECONDS) and seen - last_write < timedelta(seconds=BUSY_SECONDS)

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
        self._refresh(lane, "conflict")
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
        if lease.claimable(lane.owner, self.clock()):
            lane.lease = replace(lease, owner=lane.owner)
        else:  # someone else claimed it first: the next round picks another
            lane.others[lease.slot] = lease
            lane.seen[lease.slot] = self.clock()

    def _refresh(self, lane: _LeaseLane, why: str) -> None:
        """Re-read the partition: the key row, our lease (if still ours) and the others."""
        key, leases = read_partition(self.store, lane.key_id)
        self._count_read(why)
        if key is None:
            raise Conflict("the key is gone")
        self._learn(lane, key, leases)

    def _count_read(self, why: str) -> None:
        self.partition_reads += 1
        self.reads_by[why] = self.reads_by.get(why, 0) + 1

    def _learn(self, lane: _LeaseLane, key: KeyRecord, leases: list[Lease]) -> None:
        seen = self.clock()
        lane.read_at = time.monotonic()
        owners = sum(1 for x in leases if not x.claimable("", seen))
        lane.read_gap = min(READ_GAP_MAX, max(READ_GAP_MIN, READ_SPACING * owners))
        lane.known = key
        lane.others_stale = False
        ours = lane.lease.slot if lane.lease is not None else None
        lane.lease = None
        lane.others = {}
        for lease in leases:
            if lease.slot == ours and lease.owner == lane.owner:
                lane.lease = lease
            else:
                lane.others[lease.slot] = lease
                lane.seen[lease.slot] = seen

    # --- lease rows: creation, adoption, the new day, the pool ---------------------------
    def _create_leases(self, lane: _LeaseLane, key: KeyRecord, day: str, amount: int) -> None:
        """Spread the key row's headroom over S new lease rows (one transaction, If-Match on the key row)."""
        counters, leases = first_leases(key, day, amount * LEASE_UNITS)
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in leases]])
            self.key_commits += 1
        except Conflict:
            pass  # another instance did it first, or our row was stale
        self._refresh(lane, "create")

    def _adopt(self, lane: _LeaseLane, key: KeyRecord, day: str, now: datetime) -> None:
        """Pick a lease for `day`: a free one this instance knows of; else probe a few slots with point
        reads (a fresh instance knows only the key row, which says how many lease rows exist);
        else the partition as read now."""
        if not self._known_free(lane, day, now):
            if self._probe(lane, key, day, now):
                return
            self._refresh(lane, "adopt")
            if lane.lease is not None and lane.lease.day == day:
                return
        self._adopt_from(lane, day, now)

    def _known_free(self, lane: _LeaseLane, day: str, now: datetime) -> bool:
        return any(x.day == day and x.room > 0 and x.revoked_at is None and x.claimable(lane.owner, now)
                   for x in lane.others.values())

    def _probe(self, lane: _LeaseLane, key: KeyRecord, day: str, now: datetime) -> bool:
        """Claim a free lease found by point reads of up to `PROBES` slots, from a random one on (so
        instances starting together spread over the slots); what is read is remembered."""
        slots = key.counters.leases
        if not slots or key.counters.window_day != day:
            return False
        first = random.randrange(slots)
        for n in range(min(PROBES, slots)):
            slot = f"{LEASE_PREFIX}{(first + n) % slots:02d}"
            if slot in lane.others:
                continue
            row = self.store.read_row(lane.key_id, slot)
            if row is None:
                continue
            lease = lease_from_entity(row)
            if lease.day == day and lease.room > 0 and lease.revoked_at is None and lease.claimable(lane.owner, now):
                lane.lease = replace(lease, owner=lane.owner)  # claimed by our first write to it (If-Match)
                return True
            lane.others[slot] = lease
            lane.seen[slot] = now
        return False


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
        room = headroom(replace(key, counters=counters), day)
        share = room // max(1, len(leases))
        counters = replace(counters, window_leased=share * len(leases), total_leased=counters.total_leased + share * len(leases))
        fresh = [replace(x, day=day, grant=share, spent=0, pending=0) for x in leases]
        try:
            self.store.submit([op_update_counters(key, counters), *[op_write_lease(x) for x in fresh]])
            self.key_commits += 1
        except Conflict:
            pass
        self._refresh(lane, "rollover")

    def _pool(self, lane: _LeaseLane, pending: list[_Intent], short: list[_Intent], day: str, now: datetime) -> None:
        """No room within reach: read the partition consistently; refuse what the whole of it cannot hold."""
        key, leases = read_partition(self.store, lane.key_id)
        self._count_read("pool")
        if key is None:
            raise Conflict("the key is gone")
        room = room_of(key, leases, day)
        if short[0].amount > room:  # a refusal needs a consistent read: collect again until two agree
            key, leases, consistent = self._snapshot(lane.key_id, (key, leases))
            room = room_of(key, leases, day)
            if not consistent:
                self._learn(lane, key, leases)
                self._wait(lane)
                return  # the rows kept changing: the next round tries again with what was read last
        self._learn(lane, key, leases)
        if lane.lease is None:
            self._adopt_from(lane, day, now)
        need = max(1, short[0].amount - (lane.lease.room if lane.lease is not None else 0))  # what it lacks
        if short[0].amount <= room and not any(self._eligible(lane, x, need, now) for x in lane.others.values()
                                               if x.day == day) and headroom(key, day) < need:
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
        free = [x for x in todays if x.claimable(lane.owner, now)]
        roomy = [x for x in free if x.room > 0]
        pick = random.choice(roomy) if roomy else max(free or todays, key=lambda x: x.room)
        lane.lease = replace(pick, owner=lane.owner) if free else pick
        lane.others.pop(pick.slot, None)

    def _snapshot(self, key_id: str, first: tuple[KeyRecord, list[Lease]]) -> tuple[KeyRecord, list[Lease], bool]:
        """The partition, and whether the read is consistent: two identical collects in a row (same
        ETags) mean every row held what was read at one instant between them (a double collect;
        lease rows are only added or removed together with a key row change)."""
        key, leases = first
        last: tuple[Any, ...] | None = (key.etag, tuple(sorted((x.slot, x.etag) for x in leases)))
        for _ in range(SNAPSHOT_TRIES):
            key, leases = read_partition(self.store, key_id)
            self._count_read("snapshot")
            if key is None:
                raise Conflict("the key is gone")
            sig = (key.etag, tuple(sorted((x.slot, x.etag) for x in leases)))
            if sig == last:
                return key, leases, True
            last = sig
        return key, leases, False


__all__ = ["Lease", "LeaseLedger", "folded", "partition_counters", "read_partition", "with_leases"]
