"""Unauthenticated noise: requests without a valid vault key are rate-limited and sampled.

Anyone can send requests to the proxy. Before this gate, each one without a valid key
wrote an audit row to the ``_unauthenticated`` partition: unlimited writes for free. Now:

* **Rate limit per source**, before anything is written: a token bucket per source
  (`PER_SOURCE_BURST` requests, refilled at `PER_SOURCE_PER_SECOND`) and one for all
  sources together (`GLOBAL_BURST`, `GLOBAL_PER_SECOND`), so rotating sources does not help.
  Over the limit → 429 ``rate_limited`` with ``Stripe-Should-Retry: false``, nothing
  written.
* **Sampled audit**: at most one audit row per source per `SAMPLE_WINDOW_SECONDS`, and at
  most `GLOBAL_SAMPLES_PER_WINDOW` per window in all; the rest is only counted, and the
  count is reported in the log line of the next sampled row.

The source is the last ``X-Forwarded-For`` entry (the one the platform's front end, the
nearest proxy, appended; earlier entries are whatever the client sent), else ``unknown``.
State is per process (per instance on Azure), bounded to `MAX_SOURCES` sources (least
recently seen dropped): the bound on writes is per instance, which is what the limits
are sized for.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PER_SOURCE_BURST = 100.0
PER_SOURCE_PER_SECOND = 5.0
GLOBAL_BURST = 1000.0
GLOBAL_PER_SECOND = 50.0
SAMPLE_WINDOW_SECONDS = 60.0
GLOBAL_SAMPLES_PER_WINDOW = 100
MAX_SOURCES = 10_000


def source_of(headers: Mapping[str, str]) -> str:
    """Where a request came from, as far as the platform vouches for it (the address without
    its port: a client must not become a new source with every connection)."""
    forwarded = headers.get("x-forwarded-for", "")
    last = forwarded.split(",")[-1].strip() if forwarded else ""
    if last.startswith("[") and "]" in last:  # [IPv6]:port
        last = last[1:last.index("]")]
    elif last.count(":") == 1:  # IPv4:port
        last = last.split(":", 1)[0]
    return last[:64] or "unknown"


@dataclass
class _Source:
    tokens: float
    updated: float
    sampled_at: float = float("-inf")
    suppressed: int = 0


class NoiseGate:
    """Thread-safe rate limits and audit sampling for unauthenticated requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._global = _Source(GLOBAL_BURST, clock())
        self._window_start = clock()
        self._window_samples = 0
        self._lock = threading.Lock()

    def _source(self, source: str, now: float) -> _Source:
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Source(PER_SOURCE_BURST, now)
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        return entry

    @staticmethod
    def _refill(bucket: _Source, now: float, rate: float, burst: float) -> None:
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now

    def admit(self, source: str) -> bool:
        """May this unauthenticated request be answered normally (and perhaps audited)?"""
        now = self._clock()
        with self._lock:
            entry = self._source(source, now)
            self._refill(entry, now, PER_SOURCE_PER_SECOND, PER_SOURCE_BURST)
            self._refill(self._global, now, GLOBAL_PER_SECOND, GLOBAL_BURST)
            if entry.tokens < 1 or self._global.tokens < 1:
                entry.suppressed += 1
                return False
            entry.tokens -= 1
            self._global.tokens -= 1
            return True

    def sample(self, source: str) -> int | None:
        """None: do not write an audit row. Otherwise write one; the value is how many
        unauthenticated requests from this source went unaudited since its last row."""
        now = self._clock()
        with self._lock:
            if now - self._window_start >= SAMPLE_WINDOW_SECONDS:
                self._window_start, self._window_samples = now, 0
            entry = self._source(source, now)
            if now - entry.sampled_at < SAMPLE_WINDOW_SECONDS or self._window_samples >= GLOBAL_SAMPLES_PER_WINDOW:
                entry.suppressed += 1
                return None
            entry.sampled_at = now
            self._window_samples += 1
            skipped, entry.suppressed = entry.suppressed, 0
            return skipped
