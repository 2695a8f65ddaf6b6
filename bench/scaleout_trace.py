"""What `make bench-scaleout` can show about where the ledger's time goes (opt-in, by environment).

- ``SCALEOUT_TRACE=1``: every ledger worker records each storage call the ledger makes (range reads
  and point reads by why they were made, transactions by size and whether they lost their race); each
  ledger trial then prints them per band of the cap (the alert thresholds 50 / 80 / 100 %: admissions
  0–50 %, 50–80 %, 80–100 %, and after the last one). docs/ledger.md, "Fifth round", was measured so.
- ``SCALEOUT_CPROFILE=<dir>``: each caller thread of every worker runs under cProfile and writes
  ``<mode>-<tag>-<caller>.pstats`` there (`pstats.Stats(*files)` adds them up).
"""

from __future__ import annotations

import bisect
import cProfile
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from proxy.lease_room import RoomSearch
from proxy.store import Conflict, LedgerStore

Event = tuple[float, str]


def install(store: LedgerStore) -> list[Event]:
    """Record the ledger's storage calls in this (worker) process: (time, what) per call."""
    events: list[Event] = []
    if not os.environ.get("SCALEOUT_TRACE"):
        return events
    count_read, count_point, submit = RoomSearch._count_read, RoomSearch._count_point, store.submit

    def read(self: RoomSearch, why: str) -> None:
        events.append((time.time(), f"range_{why}"))
        count_read(self, why)

    def point(self: RoomSearch, why: str) -> None:
        events.append((time.time(), f"point_{why}"))
        count_point(self, why)

    def transaction(ops: list[Any]) -> list[str]:
        try:
            etags = submit(ops)
        except Conflict:
            events.append((time.time(), f"txn{len(ops)}_lost"))
            raise
        events.append((time.time(), f"txn{len(ops)}"))
        return etags

    RoomSearch._count_read, RoomSearch._count_point = read, point  # type: ignore[method-assign]
    store.submit = transaction  # type: ignore[method-assign]
    return events


def print_bands(layout: str, reports: list[dict[str, Any]], cap: int) -> None:
    """The workers' recorded calls, per band of the cap (by how many admissions had returned)."""
    if not os.environ.get("SCALEOUT_TRACE"):
        return
    ends = sorted(ended for r in reports for _, ended in r["admitted"])
    bands = {"0-50%": Counter[str](), "50-80%": Counter[str](), "80-100%": Counter[str](), "after": Counter[str]()}
    for r in reports:
        for at, what in r.get("trace", []):
            n = bisect.bisect_left(ends, at)
            band = ("after" if n >= len(ends) else "0-50%" if n < cap // 2
                    else "50-80%" if n < cap * 4 // 5 else "80-100%")
            bands[band][what] += 1
    for band, calls in bands.items():
        print(f"  trace {layout} {band}: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items())), flush=True)


def profiled(body: Callable[[int], None], name: str) -> Callable[[int], None]:
    """`body` run under cProfile when SCALEOUT_CPROFILE names a directory."""
    folder = os.environ.get("SCALEOUT_CPROFILE")
    if not folder:
        return body

    def run(i: int) -> None:
        profiler = cProfile.Profile()
        profiler.runcall(body, i)
        profiler.dump_stats(os.path.join(folder, f"{name}-{i}.pstats"))

    return run
