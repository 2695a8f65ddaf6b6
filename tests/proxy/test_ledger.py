"""Counter arithmetic of the ledger (reserve / settle / release, UTC day windows)."""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.ledger import current, headroom, released, reserved, settled
from proxy.store import Counters, KeyRecord

T = datetime(2026, 11, 22, tzinfo=UTC)


def key(counters: Counters, daily: int = 1000, total: int | None = None) -> KeyRecord:
    return KeyRecord("k", "stripe", "l", "h", daily, total, (), T, T, counters=counters)


def test_reserve_settle_release() -> None:
    c = reserved(Counters(), 300, "2026-11-22")
    assert (c.window_pending, c.total_pending) == (300, 300)
    s = settled(c, 300, "2026-11-22")
    assert (s.window_spent, s.window_pending, s.total_spent, s.total_pending) == (300, 0, 300, 0)
    r = released(c, 300, "2026-11-22")
    assert (r.window_spent, r.window_pending, r.total_pending) == (0, 0, 0)


def test_headroom_counts_pending_and_both_caps() -> None:
    c = Counters("2026-11-22", 400, 300, 900, 300)
    assert headroom(key(c), "2026-11-22") == 300
    assert headroom(key(c, total=1500), "2026-11-22") == 300
    assert headroom(key(c, total=1250), "2026-11-22") == 50
    assert headroom(key(c), "2026-11-23") == 1000  # a new UTC day
    assert headroom(key(Counters("2026-11-22", 1000, 50)), "2026-11-22") == 0


def test_settling_yesterdays_reservation_moves_only_totals() -> None:
    c = reserved(Counters(), 500, "2026-11-22")
    today = reserved(current(c, "2026-11-23"), 100, "2026-11-23")
    s = settled(today, 500, "2026-11-22")
    assert (s.window_spent, s.window_pending) == (0, 100)
    assert (s.total_spent, s.total_pending) == (500, 100)
