"""The spend ledger: reserve before forwarding, settle or release after.

Every key row carries its counters (see `proxy.store.Counters`). A charge first
*reserves* its amount: pending grows, in one If-Match update of the key row that fails
if anything changed the row since it was read (another reservation, a settle, a
revoke). Only after that update commits is the request forwarded. Afterwards the
reservation is *settled* (pending → spent, Stripe answered 2xx), *released* (pending
shrinks, Stripe definitely did nothing) or left pending (the outcome is ambiguous).

Because the check ``spent + pending + amount <= cap`` and the update happen atomically
against the version that was checked, the sum of every reservation that ever commits
stays within the cap, so confirmed spend can never exceed it, whatever the concurrency
and wherever a process crashes (a crash leaves a reservation pending: too cautious,
never too generous).

`Ledger` is the small interface the proxy uses. `TableLedger` commits each call on its
own; `GroupLedger` queues concurrent calls on the same key within one process and commits
them together in ONE If-Match transaction, so throughput under contention no longer
collapses into ETag conflicts. What the proxy uses is `proxy.leases.LeaseLedger`: the same
group commit on the instance's own headroom lease row, so that many instances do not meet
at the key row either (docs/ledger.md, "The cap across many instances").
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from azure.data.tables import TableServiceClient

from core.errors import SpendgateError
from proxy.store import Conflict, Counters, KeyRecord, LedgerStore, Operation, op_update_counters, per_ledger_table


def current(c: Counters, day: str) -> Counters:
    """The counters as seen on `day`: a new UTC day starts with an empty window."""
    return c if c.window_day == day else replace(c, window_day=day, window_spent=0, window_pending=0,
                                                 window_leased=0)


def headroom(key: KeyRecord, day: str) -> int:
    """Cents that may still be reserved on `day` from the key row itself (never negative).

    Cents granted to lease rows (proxy/leases.py) are not the key row's to give."""
    c = current(key.counters, day)
    room = key.daily_cap_cents - c.window_spent - c.window_pending - c.window_leased
    if key.total_cap_cents is not None:
        room = min(room, key.total_cap_cents - c.total_spent - c.total_pending - c.total_leased)
    return max(0, room)


def reserved(c: Counters, amount: int, day: str) -> Counters:
    c = current(c, day)
    return replace(c, window_pending=c.window_pending + amount, total_pending=c.total_pending + amount)


def settled(c: Counters, amount: int, reserve_day: str) -> Counters:
    """Pending → spent. A reservation from an older day moves only the lifetime totals.

    Not clamped at 0: with headroom leases a reservation's pending cents may sit on another
    row of the partition than the one its settle lands on, so one row's pending can dip below
    0 while the partition's sum stays exact (docs/ledger.md, "Pending is fungible")."""
    c = replace(c, total_pending=c.total_pending - amount, total_spent=c.total_spent + amount)
    if reserve_day == c.window_day:
        c = replace(c, window_pending=c.window_pending - amount, window_spent=c.window_spent + amount)
    return c


def released(c: Counters, amount: int, reserve_day: str) -> Counters:
    c = replace(c, total_pending=c.total_pending - amount)
    if reserve_day == c.window_day:
        c = replace(c, window_pending=c.window_pending - amount)
    return c


def cap_exceeded(amount: int, room: int) -> SpendgateError:
    return SpendgateError(
        "spend_cap_exceeded",
        f"This charge of {amount} cents would exceed the key's spend cap ({room} cents left).",
        param="amount",
    )


class Ledger(Protocol):
    """What the proxy needs from a ledger; each call is atomic with the extra operations."""

    def reserve(self, key: KeyRecord, amount: int, day: str, extra: list[Operation]) -> list[str]: ...

    def settle(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]: ...

    def release(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]: ...


class TableLedger:
    """Counters on the key row, changed by If-Match in one transaction with `extra` ops.

    Each call raises `Conflict` when the key row changed since `key` was read (the
    caller re-reads and retries) and `spend_cap_exceeded` when a reservation doesn't fit.
    Returns the new etags of [key row, *extra].
    """

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    def reserve(self, key: KeyRecord, amount: int, day: str, extra: list[Operation]) -> list[str]:
        if amount > headroom(key, day):
            raise cap_exceeded(amount, headroom(key, day))
        return self.store.submit([op_update_counters(key, reserved(key.counters, amount, day)), *extra])

    def settle(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self.store.submit([op_update_counters(key, settled(key.counters, amount, reserve_day)), *extra])

    def release(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self.store.submit([op_update_counters(key, released(key.counters, amount, reserve_day)), *extra])


log = logging.getLogger("spendgate.ledger")
MAX_BATCH_OPS = 100  # Azure's entity-group transaction limit (key row + extras)
MAX_BATCH_BYTES = 3 * 1024 * 1024  # estimated payload, under the 4 MiB limit
_MOVES: dict[str, Callable[[Counters, int, str], Counters]] = {
    "reserve": reserved, "settle": settled, "release": released,
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _Intent:
    """One caller's reserve/settle/release, waiting for a leader to commit it."""

    action: str
    key: KeyRecord
    amount: int
    day: str
    extra: list[Operation]
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    etags: list[str] | None = None
    error: BaseException | None = None
    rows: set[str] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {op[1]["RowKey"] for op in self.extra}
        self.size = sum(len(json.dumps(op[1], default=str)) + 512 for op in self.extra)

    def finish(self, etags: list[str] | None = None, error: BaseException | None = None) -> None:
        self.etags, self.error, self.finished = etags, error, True
        self.wake.set()


class _Lane:
    """The queue of one key in this process, and the key row as this process last wrote it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: deque[_Intent] = deque()
        self.leading = False
        self.leader: _Intent | None = None  # the intent whose caller leads now
        self.known: KeyRecord | None = None


class GroupLedger:
    """Group commit per key: one leader commits many callers' calls in ONE If-Match write.

    A caller queues its intent on the key's lane. With no leader active, it becomes the
    leader: it takes the queued intents (up to the transaction limits), applies them in
    order to the counters of the key row version it knows, admits each reservation only if
    it still fits the headroom left by those before it, and commits the new counters with
    If-Match on that version, together with every admitted intent's extra ops, in ONE
    entity-group transaction. On 412 (the row changed: another process, a revoke) it
    re-reads the row and re-decides; when one intent's own op fails (say its idempotency
    record already exists) it drops that intent, which gets `Conflict` exactly as with
    `TableLedger`, and commits the rest. Reservations that do not fit get
    `spend_cap_exceeded` only after a commit (or a read) proved the version current.
    Reservations on a key that is no longer active get `Conflict`, so the caller re-reads
    and answers revoked/expired itself. Then leadership passes to the next queued caller.
    """

    def __init__(self, store: LedgerStore, *, clock: Callable[[], datetime] = _utcnow, max_rounds: int = 12,
                 max_ops: int = MAX_BATCH_OPS, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self.store = store
        self.clock = clock
        self.max_rounds = max_rounds
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._lanes: dict[str, _Lane] = {}
        self._lanes_lock = threading.Lock()
        self.commits = 0  # transactions committed (for benchmarks)

    def reserve(self, key: KeyRecord, amount: int, day: str, extra: list[Operation]) -> list[str]:
        return self._submit(_Intent("reserve", key, amount, day, list(extra)))

    def settle(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self._submit(_Intent("settle", key, amount, reserve_day, list(extra)))

    def release(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self._submit(_Intent("release", key, amount, reserve_day, list(extra)))

    # --- queueing and leadership ------------------------------------------------------
    def _lane(self, key_id: str) -> _Lane:
        with self._lanes_lock:
            lane = self._lanes.get(key_id)
            if lane is None:
                lane = self._lanes[key_id] = self._new_lane()
            return lane

    def _new_lane(self) -> _Lane:
        return _Lane()

    def _submit(self, intent: _Intent) -> list[str]:
        lane = self._lane(intent.key.key_id)
        with lane.lock:
            lane.queue.append(intent)
            lead = not lane.leading
            lane.leading = True
        if not lead:
            intent.wake.wait()
        if not intent.finished:  # we lead (first in line, or handed leadership)
            self._lead(lane, intent)
        if intent.error is not None:
            raise intent.error
        assert intent.etags is not None
        return intent.etags

    def _lead(self, lane: _Lane, mine: _Intent) -> None:
        try:
            while not mine.finished:
                with lane.lock:
                    batch = self._take(lane)
                if not batch:  # cannot happen (we are first in line); never spin
                    mine.finish(error=Conflict("not queued"))
                    break
                lane.leader = mine
                self._commit(lane, batch)
        finally:
            with lane.lock:
                while lane.queue and lane.queue[0].finished:
                    lane.queue.popleft()
                if lane.queue:
                    lane.queue[0].wake.set()  # not finished: it leads next
                else:
                    lane.leading = False

    def _take(self, lane: _Lane) -> list[_Intent]:
        """FIFO intents within the transaction limits; an intent touching a row already
        in the batch waits for the next one (a transaction may name each entity once)."""
        batch: list[_Intent] = []
        rows: set[str] = set()
        ops, size = 1, 0
        for intent in list(lane.queue):
            if intent.finished:
                continue
            n, b = len(intent.extra), intent.size
            if batch and (ops + n > self.max_ops or size + b > self.max_bytes):
                break
            if rows & intent.rows:
                continue
            batch.append(intent)
            rows |= intent.rows
            ops, size = ops + n, size + b
        for intent in batch:
            lane.queue.remove(intent)
        return batch

    # --- the commit -------------------------------------------------------------------
    def _commit(self, lane: _Lane, batch: list[_Intent]) -> None:
        """Decide and commit `batch`; every intent in it is finished when this returns."""
        pending = sorted(batch, key=lambda i: i.action == "reserve")  # settles/releases first
        # The row as this process last wrote it, else as the first caller has it. Neither
        # counts as fresh: a caller's row may come from KnownKeys (proxy/known_keys.py), so
        # a refusal for the cap is made final only on a row this leader read or committed.
        state: KeyRecord | None = lane.known if lane.known is not None else batch[0].key
        fresh = False
        try:
            for _round in range(self.max_rounds):
                if not pending or state is None:
                    return
                state, fresh = self._round(lane, pending, state, fresh)
            for intent in pending:
                intent.finish(error=Conflict("the key row is too contended"))
        except Exception as exc:  # storage down or a bug: fail every intent still waiting (closed)
            if not isinstance(exc, (SpendgateError, Conflict)):
                log.exception("group commit failed for key_id=%s", batch[0].key.key_id)
            for intent in pending:
                if not intent.finished:
                    intent.finish(error=_copy_error(exc))

    def _round(
        self, lane: _Lane, pending: list[_Intent], state: KeyRecord, fresh: bool,
    ) -> tuple[KeyRecord | None, bool]:
        """One decide-and-commit attempt: (None, _) when done, else the state to retry from
        and whether it was just read."""
        now = self.clock()
        counters = state.counters
        admitted: list[_Intent] = []
        refused: list[tuple[_Intent, int]] = []
        inactive: list[_Intent] = []
        for intent in pending:
            if intent.action == "reserve":
                if state.status(now) != "active":
                    inactive.append(intent)
                    continue
                room = headroom(replace(state, counters=counters), intent.day)
                if intent.amount > room:
                    refused.append((intent, room))
                    continue
            counters = _MOVES[intent.action](counters, intent.amount, intent.day)
            admitted.append(intent)
        for intent in inactive:  # revocation and expiry are final: the caller re-reads and says so
            pending.remove(intent)
            intent.finish(error=Conflict("the key is not active"))
        if not admitted:
            if refused and not fresh:
                return self._reread(lane, pending), True
            for intent, room in refused:
                pending.remove(intent)
                intent.finish(error=cap_exceeded(intent.amount, room))
            return None, fresh
        ops: list[Operation] = [op_update_counters(state, counters)]
        owners: list[_Intent] = []
        for intent in admitted:
            ops += intent.extra
            owners += [intent] * len(intent.extra)
        try:
            etags = self.store.submit(ops)
        except Conflict as exc:
            if exc.index is not None and 0 < exc.index < len(ops):
                offender = owners[exc.index - 1]  # its own op failed: it alone takes the Conflict path
                pending.remove(offender)
                offender.finish(error=Conflict(str(exc), exc.index))
                return state, fresh
            return self._reread(lane, pending, suspect=state), True
        self.commits += 1
        lane.known = replace(state, counters=counters, etag=etags[0])
        pos = 1
        for intent in admitted:
            n = len(intent.extra)
            pending.remove(intent)
            intent.finish([etags[0], *etags[pos:pos + n]])
            pos += n
        for intent, room in refused:  # the committed version was current: these are final
            pending.remove(intent)
            intent.finish(error=cap_exceeded(intent.amount, room))
        return None, True

    def _reread(self, lane: _Lane, pending: list[_Intent], suspect: KeyRecord | None = None) -> KeyRecord | None:
        fresh = self.store.read_key(pending[0].key.key_id)
        lane.known = fresh
        if fresh is None or (suspect is not None and fresh.etag == suspect.etag):
            # The key is gone, or the failure was not the key row and storage did not say
            # which op failed: every caller takes the ordinary Conflict path (re-read, retry).
            for intent in pending:
                intent.finish(error=Conflict("the batch failed"))
            pending.clear()
            return None
        return fresh


def _copy_error(exc: BaseException) -> BaseException:
    """A fresh exception per waiting caller (one instance must not be raised in many threads)."""
    if isinstance(exc, SpendgateError):
        return SpendgateError(exc.code, exc.message, param=exc.param)
    if isinstance(exc, Conflict):
        return Conflict(str(exc), exc.index)
    return SpendgateError("governance_unavailable")


def shared_group_ledger(tables: TableServiceClient, store: LedgerStore) -> GroupLedger:
    """The one ledger per (table service, table) in this process, so every request thread of
    the proxy queues on the same lanes: a `LeaseLedger` (group commit on this instance's
    headroom lease, proxy/leases.py), which gives its leases back when the process exits."""
    from proxy.leases import LeaseLedger  # leases builds on this module

    return per_ledger_table(tables, store, LeaseLedger.for_process, store)


__all__ = [
    "Conflict", "GroupLedger", "Ledger", "TableLedger", "cap_exceeded", "current", "headroom", "released",
    "reserved", "settled", "shared_group_ledger",
]
