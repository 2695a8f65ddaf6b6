"""Where an instance finds room for a reservation: its lease, other leases, or a refusal.

The search half of `LeaseLedger` (proxy/leases.py commits). An instance without a lease claims
one: a free lease it knows of, else one of a few slots probed with point reads (the key row
says how many lease rows exist), else one seen in a read of the whole partition. A lease that
runs short takes room from others in the same transaction as the reservation, from the rows as
read at most `FRESH_SECONDS` ago (else it reads the key's lease range first, `_pool`; If-Match
checks what it takes): all of a free (or idle) one's, half of an owner's (those that wrote
longest ago first), a fragment (less than the taker needs) of any, nothing from an owner busy
with its last few reservations, up to a fair share, in whole units of the charge. A take that
loses its race pauses before the next read. With nothing within reach (nothing a take from the
read would gain), a short instance waits, near a band's edge point-reads its own lease (a band's
grant lands there; 100 ms at most between looks), and reads the whole partition at most every
`READ_SPACING` seconds per instance owning a lease (a fleet of waiting instances reads it ~30
times a second, however many there are). A refusal comes only from a consistent read of the
partition (`_snapshot`); an alert threshold is fired by a commit with If-Match on every row,
which proves its read current. Why each rule: docs/ledger.md, "Candidates measured for many
instances", "Fourth round" and "Fifth round".
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from proxy import alert_bands
from proxy.lease_rows import (
    Lease,
    folded_all,
    granted,
    key_room,
    lease_from_entity,
    op_write_lease,
    read_partition,
    room_of,
    split,
)
from proxy.ledger import _Intent, _Lane, cap_exceeded, current
from proxy.store import LEASE_PREFIX, Conflict, Counters, KeyRecord, LedgerStore, op_update_counters

MAX_VICTIMS = 6  # leases one transaction may take headroom from
BUSY_SECONDS = 0.5  # an owner that wrote its lease this recently is busy with it
SNAPSHOT_TRIES = 3  # collects of the partition before a refusal is given up for this round
PROBES = 3  # point reads of lease slots an instance without a lease tries before it reads the whole partition
READ_SPACING = 0.03  # seconds between a dry lane's reads of the partition, per instance owning a lease (the
READ_GAP_MIN, READ_GAP_MAX = 0.1, 1.5  # fleet's reads stay ~30/s however many instances wait), within these
MAX_BACKOFF, EDGE_BACKOFF = 0.4, 0.1  # seconds a dry instance waits at most (`_wait`): mid-band, near a band's edge
FRESH_SECONDS = 0.25  # room is taken from other leases as read at most this long ago, else the partition is read first


log = logging.getLogger(__name__)


def _units(cents: int, unit: int) -> int:
    """`cents` rounded down to a multiple of `unit` (unchanged when less than one unit)."""
    return cents - cents % unit if unit > 0 and cents >= unit else cents


class _LeaseLane(_Lane):
    """A key's lane in this process: its queue, the key row and the leases as last seen."""

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner  # written on the lease this lane claims
        self.lease: Lease | None = None  # the lease this process reserves against
        self.others: dict[str, Lease] = {}  # the other leases as last read (If-Match bases for taking room)
        self.others_stale = False  # taking room from one of them failed: read them all before trying again
        self.backoff = 0.0  # seconds to wait before the next read of the partition while the room is with others
        self.read_gap = 0.0  # seconds between reads of the whole partition while nothing is within reach
        self.read_at = 0.0  # when the whole partition was last read (monotonic)
        self.last_used = time.monotonic()
        self.key_id = ""
        self.near_edge = True  # the last read (`_pool`) showed less of the band left than a charge per owner: a
        # dry instance polls its own lease for the next band's grant (mid-band nothing can land there)


class RoomSearch:
    """Claiming a lease, taking room from others, refusing: the parts of `LeaseLedger` that read."""

    store: LedgerStore
    clock: Callable[[], datetime]
    ttl: timedelta
    partition_reads: int
    reads_by: dict[str, int]
    key_commits: int
    on_threshold: Callable[[KeyRecord, alert_bands.Binding, list[int]], None] | None

    def _take_room(self, lane: _LeaseLane, key: KeyRecord, counters: Counters, mine: Lease, day: str, need: int,
                   unit: int, now: datetime) -> tuple[Counters, int, list[Lease], bool]:
        """Headroom for `need` more cents, from the rows as last read (`lane.others`, fresh: no reads
        here; each taken row is written with If-Match on the version read): first what the key row
        still holds, then free leases whole, then owners' (half, at most; those that wrote longest ago
        first), up to a fair share of the room in sight, in multiples of `unit` (the charge's size), so
        no lease is left with a fragment no such charge can use."""
        gained, victims, key_took = 0, [], False
        room = key_room(key, counters, day)  # below the next unfired alert threshold
        if room > 0:
            took = min(room, max(need, room // max(1, key.counters.leases)))
            counters = granted(current(counters, day), took)
            gained, key_took = took, True
        candidates = [v for v in lane.others.values()
                      if v.slot != mine.slot and v.day == day and self._eligible(lane, v, need, now)]
        owners = 1 + sum(1 for v in lane.others.values() if v.day == day and not v.claimable(lane.owner, now))
        in_sight = mine.room + room + sum(v.room for v in candidates)
        target = max(need, _units(in_sight // owners, unit))  # a fair share: taken rarely, and left for others
        # unowned leases first, in random order (instances looking at once pick different ones), then
        # owned ones written longest ago first (within 50 ms at random, so takers reading together spread
        # out): an owner that has not written lately is the least likely to write before our take commits
        # (roomiest first lost most of its takes to the owner's own next write; docs/ledger.md, fifth round)
        candidates.sort(key=lambda v: (0, random.random()) if v.claimable(lane.owner, now)
                        else (1, (v.expires_at or now).timestamp() + random.uniform(0, 0.05)))
        for v in candidates:
            if gained >= target or len(victims) >= MAX_VICTIMS:
                break
            if v.claimable(lane.owner, now):
                take = v.room
            else:  # half of an owner's room at most, but what we still lack if it has that much
                take = min(v.room, max(need - gained, _units(min(v.room // 2, target - gained), unit)))
            victims.append(replace(v, grant=v.grant - take))
            gained += take
        if gained < need:  # not enough yet: keep only what free and idle leases give (safe progress), never
            kept = [v for v in victims if self._idle(lane, lane.others[v.slot], now)]  # live owners' fragments:
            gained -= sum(lane.others[v.slot].grant - v.grant for v in victims if v not in kept)  # two short
            victims = kept  # instances would pass them back and forth
        return counters, gained, victims, key_took

    def _could_take(self, lane: _LeaseLane, key: KeyRecord, day: str, need: int, unit: int, now: datetime) -> bool:
        """Would the next round's take (`_take_room`, from the rows as just read) gain anything?"""
        if lane.lease is None:
            return True  # it claims one first
        gained = self._take_room(lane, key, key.counters, lane.lease, day, need, unit, now)[1]
        return gained > 0

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

    def _refresh(self, lane: _LeaseLane, why: str) -> None:
        """Re-read the partition: the key row, our lease (if still ours) and the others."""
        key, leases = read_partition(self.store, lane.key_id)
        self._count_read(why)
        if key is None:
            raise Conflict("the key is gone")
        self._learn(lane, key, leases)

    def _count_point(self, why: str) -> None:
        self.reads_by['pt_' + why] = self.reads_by.get('pt_' + why, 0) + 1

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

    # --- lease rows: creation, adoption, the new day, the pool ---------------------------

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
            self._count_point('probe')
            row = self.store.read_row(lane.key_id, slot)
            if row is None:
                continue
            lease = lease_from_entity(row)
            if lease.day == day and lease.room > 0 and lease.revoked_at is None and lease.claimable(lane.owner, now):
                lane.lease = replace(lease, owner=lane.owner)  # claimed by our first write to it (If-Match)
                return True
            lane.others[slot] = lease
        return False

    def _pool(self, lane: _LeaseLane, pending: list[_Intent], short: list[_Intent], day: str, now: datetime) -> None:
        """No room within reach: read the partition consistently; refuse what the whole of it cannot hold.

        The room within reach stops at the next unfired alert threshold (proxy/alert_bands.py): when a
        consistent read shows the reservation needs room past it, the threshold fires here (one
        If-Match on the key row) and the next round takes the room."""
        key, leases = read_partition(self.store, lane.key_id)
        self._count_read("pool")
        if key is None:
            raise Conflict("the key is gone")
        room, banded = room_of(key, leases, day), room_of(key, leases, day, banded=True)
        lane.near_edge = banded < short[0].amount * max(2, sum(1 for x in leases if not x.claimable("", now)))
        if room >= short[0].amount > banded:
            # a threshold, the cap open past it: fired by a commit with If-Match on every row, which
            # proves the read consistent (no second collect: at a band's edge every instance is here)
            self._fire_thresholds(lane, key, leases, day, short[0].amount, every_row=True)
            return  # the next round takes the new band's room (or, the cap spent meanwhile, refuses)
        if short[0].amount > banded:
            # a refusal (or a threshold) needs a consistent read: collect again until two agree
            key, leases, consistent = self._snapshot(lane.key_id, (key, leases))
            room = room_of(key, leases, day)
            if not consistent:
                self._learn(lane, key, leases)
                self._wait(lane)
                return  # the rows kept changing: the next round tries again with what was read last
            if self._fire_thresholds(lane, key, leases, day, short[0].amount):
                return  # the cap is open past the threshold now: the next round takes the room
        self._learn(lane, key, leases)
        if lane.lease is None:
            self._adopt_from(lane, day, now)
        need = max(1, short[0].amount - (lane.lease.room if lane.lease is not None else 0))  # what it lacks
        if short[0].amount <= room and not self._could_take(lane, key, day, need, short[0].amount, now):
            self._wait(lane)  # the room is with owners using it: let them, then look again (at once, the
            # next round would find the same and read again: a spin of reads)
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
        instances still holding room are using it, and every read slows everyone's storage. Near a
        band's edge at most 100 ms: the next band's grant lands in our lease any moment, and with every
        instance dry a long sleep is time nobody uses (a poll of our own lease is one point read)."""
        limit = EDGE_BACKOFF if lane.near_edge else MAX_BACKOFF
        lane.backoff = min(limit, max(0.05, lane.backoff * 2))
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

    def _fire_thresholds(self, lane: _LeaseLane, key: KeyRecord, leases: list[Lease], day: str, need: int,
                         *, every_row: bool = False) -> bool:
        """On a consistent read: commit the thresholds the next reservation crosses (If-Match on the key
        row as read) with the next band's room granted to today's leases, then tell `on_threshold`.
        True when the band moved (re-read, try again).

        When a lease moved since the read, the partition is read once more and the commit made again
        with If-Match on the key row and EVERY lease row: a transaction that commits proves the rows
        were still as read, so that read was as good as a consistent one. (Committing the marker alone
        would leave the new band's room on the key row, and every instance would then take it from
        there: one contended key row again; measured, 32 × 1 fell from ~0.55 to 0.17 of raw.)"""
        retried = False
        for _attempt in range(SNAPSHOT_TRIES):
            total = folded_all(key, leases, day)
            true_room = room_of(key, leases, day)
            crossing = alert_bands.to_fire(key, total, day, need, true_room)
            if not crossing:
                self._learn(lane, key, leases)
                return retried  # (after a retry: what was read differs, so look again)
            b = alert_bands.binding(key, total, day)
            marked = set(crossing)
            used = b.used + need if need <= true_room else b.used  # with the reservation that reaches it, if it fits
            note = alert_bands.usage_note(b.window, marked, used, self.clock())  # in the marker's write, for the sweeper
            try:
                self.store.submit(self._grant_next_band(key, leases, day, b.window, marked, need, every_row, note,
                                                        self.clock(), lane.lease.slot if lane.lease else None))
                self.key_commits += 1
                break
            except Conflict:
                key_row, leases = read_partition(self.store, lane.key_id)
                self._count_read("threshold")
                if key_row is None:
                    raise Conflict("the key is gone") from None
                key, every_row, retried = key_row, True, True
        else:
            self._learn(lane, key, leases)
            return True  # the rows kept changing: the next round looks again
        if self.on_threshold is not None:
            try:  # usage as of the crossing: with the reservation that reaches it (unless the cap refuses it)
                self.on_threshold(key, replace(b, used=used), crossing)
            except Exception:  # an alert never fails the ledger
                log.exception("threshold alert for key_id=%s failed", key.key_id)
        self._refresh(lane, "threshold")
        return need <= true_room

    @staticmethod
    def _grant_next_band(key: KeyRecord, leases: list[Lease], day: str, window: str, marked: set[int], unit: int,
                         every_row: bool, note: str, now: datetime, firer: str | None = None) -> list[Any]:
        """The threshold's marker as one If-Match write of the key row that also grants the room up to
        the next unfired threshold to today's leases that have a live owner (all of today's when none
        has; `firer`'s own lease first), in whole multiples of the charge's size when the room allows
        (If-Match on each as read; with `every_row`, on every other lease too, unchanged). `note`: the
        crossing's usage, kept on the key row for the alert sweeper (alerts/sweeper.py).

        Why only owned leases: the instances using the key are the ones that crossed the band, and a
        share of the next band each is all they need until its edge; room given to unowned leases
        would have to be taken from them again, one shortage and one read of the partition at a time
        (measured: most of those reads, at 32 instances of one caller each)."""
        fired_key = replace(key, alerts_fired=alert_bands.marker(window, alert_bands.fired(key, window) | marked))
        live = [x for x in leases if x.day == day and x.revoked_at is None]
        todays = [x for x in live if not x.claimable("", now)] or live
        todays.sort(key=lambda x: x.slot != firer)  # the firing instance's own lease first: with fewer whole
        # units than leases (the cap's last charge), they go to the instance that is here to use them,
        # not to one asleep in its back-off
        counters = current(key.counters, day)
        shares = split(key_room(fired_key, counters, day), len(todays), unit) if todays else []
        others = [op_write_lease(x) for x in leases if x not in todays] if every_row else []
        if sum(shares) <= 0:
            marker = alert_bands.op_mark_fired(key, window, marked, note)
            return [marker, *[op_write_lease(x) for x in todays], *others] if every_row else [marker]
        op_key = op_update_counters(key, granted(counters, sum(shares)))
        op_key[1]["alerts_fired"] = fired_key.alerts_fired
        if note:
            op_key[1]["alerts_usage"] = note
        return [op_key, *[op_write_lease(replace(x, grant=x.grant + g)) for x, g in zip(todays, shares, strict=True)],
                *others]

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
