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

`Ledger` is the small interface the proxy uses, so a batching implementation (group
commit under contention) can replace `TableLedger` locally.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from core.errors import SpendgateError
from proxy.store import Conflict, Counters, KeyRecord, LedgerStore, Operation, op_update_counters


def current(c: Counters, day: str) -> Counters:
    """The counters as seen on `day`: a new UTC day starts with an empty window."""
    return c if c.window_day == day else replace(c, window_day=day, window_spent=0, window_pending=0)


def headroom(key: KeyRecord, day: str) -> int:
    """Cents that may still be reserved on `day` (never negative)."""
    c = current(key.counters, day)
    room = key.daily_cap_cents - c.window_spent - c.window_pending
    if key.total_cap_cents is not None:
        room = min(room, key.total_cap_cents - c.total_spent - c.total_pending)
    return max(0, room)


def reserved(c: Counters, amount: int, day: str) -> Counters:
    c = current(c, day)
    return replace(c, window_pending=c.window_pending + amount, total_pending=c.total_pending + amount)


def settled(c: Counters, amount: int, reserve_day: str) -> Counters:
    """Pending → spent. A reservation from an older day moves only the lifetime totals."""
    c = replace(c, total_pending=max(0, c.total_pending - amount), total_spent=c.total_spent + amount)
    if reserve_day == c.window_day:
        c = replace(c, window_pending=max(0, c.window_pending - amount), window_spent=c.window_spent + amount)
    return c


def released(c: Counters, amount: int, reserve_day: str) -> Counters:
    c = replace(c, total_pending=max(0, c.total_pending - amount))
    if reserve_day == c.window_day:
        c = replace(c, window_pending=max(0, c.window_pending - amount))
    return c


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
            raise SpendgateError(
                "spend_cap_exceeded",
                f"This charge of {amount} cents would exceed the key's spend cap ({headroom(key, day)} cents left).",
                param="amount",
            )
        return self.store.submit([op_update_counters(key, reserved(key.counters, amount, day)), *extra])

    def settle(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self.store.submit([op_update_counters(key, settled(key.counters, amount, reserve_day)), *extra])

    def release(self, key: KeyRecord, amount: int, reserve_day: str, extra: list[Operation]) -> list[str]:
        return self.store.submit([op_update_counters(key, released(key.counters, amount, reserve_day)), *extra])


__all__ = ["Conflict", "Ledger", "TableLedger", "current", "headroom", "released", "reserved", "settled"]
