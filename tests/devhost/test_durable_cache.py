"""The engine's history cache: used only for the exact instance row version our commit produced."""

from __future__ import annotations

from devhost.durable.engine import HistoryCache
from devhost.durable.store import HistoryRow, Instance


def _inst(etag: str | None, length: int = 2, generation: int = 0, status: str = "Running") -> Instance:
    return Instance("i1", "orch", status, None, generation=generation, history_length=length, etag=etag)


def _rows(n: int) -> list[HistoryRow]:
    return [HistoryRow({"EventType": 12, "EventId": -1}, {}, None) for _ in range(n)]


def test_a_hit_needs_the_same_etag_generation_and_length() -> None:
    cache = HistoryCache()
    rows = _rows(2)
    cache.put(_inst("e1"), rows)
    assert cache.get(_inst("e1")) is rows
    assert cache.get(_inst("e2")) is None  # another writer committed: back to storage
    assert cache.get(_inst("e1")) is None  # and the stale entry is gone
    cache.put(_inst("e1"), rows)
    assert cache.get(_inst("e1", generation=1)) is None
    cache.put(_inst("e1"), rows)
    assert cache.get(_inst("e1", length=3)) is None
    assert cache.get(_inst(None)) is None


def test_finished_instances_are_not_kept_and_the_oldest_entries_go_first() -> None:
    cache = HistoryCache(capacity=2)
    cache.put(_inst("e1", status="Completed"), _rows(2))
    assert cache.get(_inst("e1")) is None
    for i in range(3):
        cache.put(Instance(f"i{i}", "orch", "Running", None, history_length=1, etag="e"), _rows(1))
    assert cache.get(Instance("i0", "orch", "Running", None, history_length=1, etag="e")) is None
    assert cache.get(Instance("i2", "orch", "Running", None, history_length=1, etag="e")) is not None
