"""Spend alert thresholds as bands of the cap: how a crossing is decided exactly once across lease rows.

A key's thresholds (`alert_thresholds`, default 50, 80 and 100 % of its *binding cap*) are crossed by
the key's usage, `spent + pending` in the binding cap's window. The binding cap is the lifetime cap
(`total_cap_cents`, window `lifetime`) when it is set and not above the daily cap, else the daily cap
(window: the UTC day). Which thresholds fired in the current window is one field of the key row,
`alerts_fired` (`<window>:<percent>,<percent>`), changed only with If-Match on the key row.

With headroom leases (proxy/leases.py) the usage is spread over the key row and up to 64 lease rows
that different instances write, so no single commit sees the sum. The ledger therefore never hands
out room up to the next unfired threshold: the key row grants leases (at creation, when a lease takes
room from it, on a new day) at most `band_room`, the cents left strictly below that threshold
counting what it already granted. Usage can then pass the threshold only through room the key row has not yet
granted, and the only way to get it is the ledger's consistent read of the whole partition (the same
double collect that a refusal needs): when that read shows the partition's room below the threshold
cannot hold the reservation, the leader commits the threshold into `alerts_fired` with If-Match on
the key row (the version it read in that consistent collect) — the *ledger commit that opens the
cap past the threshold* — and the reservation takes the new room in its next round. So:

- exactly once: a second instance's marker write fails its If-Match, re-reads, and sees it fired;
- never missed: usage cannot pass a threshold without that commit;
- never early: it fires only once the rows below the threshold are proven (consistently) unable to
  hold the next reservation, i.e. usage + that reservation reaches it.

The same write records `alerts_usage` (`usage_note`: the window, the percents, the usage with the
reservation that crossed them, the time): no extra write, and the alert sweeper (alerts/sweeper.py)
can rebuild the exact alert if the process died before recording it.

The 100 % threshold is the cap itself: it fires when a reservation fills the cap exactly, or when a
consistent read refuses a charge for the cap once every lower threshold has fired. A release after the crossing (a decline) can bring usage
back below a threshold that fired; it does not fire again in that window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from proxy.store import KEY_ROW, Counters, KeyRecord, Operation

DEFAULT_THRESHOLDS = (50, 80, 100)


@dataclass(frozen=True)
class Binding:
    """The cap that binds, its window, and the usage counted against it."""

    window: str  # "lifetime" or the UTC day
    cap: int
    used: int  # spent + pending
    granted: int  # cents granted to lease rows in that window

    def cents(self, percent: int) -> int:
        return self.cap * percent // 100


def thresholds(key: KeyRecord) -> tuple[int, ...]:
    return DEFAULT_THRESHOLDS if key.alert_thresholds is None else key.alert_thresholds


def binding(key: KeyRecord, c: Counters, day: str) -> Binding:
    """`c` is the key row's counters already `current` for `day` (folded with the leases or not)."""
    if key.total_cap_cents is not None and key.total_cap_cents <= key.daily_cap_cents:
        return Binding("lifetime", key.total_cap_cents, c.total_spent + c.total_pending, c.total_leased)
    return Binding(day, key.daily_cap_cents, c.window_spent + c.window_pending, c.window_leased)


def fired(key: KeyRecord, window: str) -> set[int]:
    text = key.alerts_fired or ""
    head, _, tail = text.partition(":")
    return {int(p) for p in tail.split(",") if p.isdigit()} if head == window else set()


def marker(window: str, percents: set[int]) -> str:
    return f"{window}:{','.join(str(p) for p in sorted(percents))}"


def next_unfired(key: KeyRecord, b: Binding) -> int | None:
    """Cents of the lowest threshold that has not fired in the window (None: none left)."""
    done = fired(key, b.window)
    left = [b.cents(p) for p in thresholds(key) if p not in done]
    return min(left) if left else None


def band_room(key: KeyRecord, c: Counters, day: str, *, granted: bool = True) -> int | None:
    """What may still be granted or reserved *strictly below* the next unfired threshold (None: no
    limit), so the reservation that reaches it always goes through the consistent read that fires it.

    `granted`: count what the key row granted to leases (the key row's own view); False for the
    partition with every lease folded in, where usage alone counts (so a reservation that does not
    fit below the threshold there always reaches it: `to_fire` then names it)."""
    b = binding(key, c, day)
    limit = next_unfired(key, b)
    return None if limit is None else max(0, limit - b.used - (b.granted if granted else 0) - 1)


def to_fire(key: KeyRecord, folded: Counters, day: str, need: int, true_room: int) -> list[int]:
    """Thresholds a consistent read of the partition (`folded`: every lease folded in) shows reached
    by the next reservation of `need` cents. When the cap refuses it: any threshold usage has reached
    already, and 100 % once every lower threshold has fired (the cap stopped a charge in its last
    band; a single charge bigger than the room on a fresh key is not "100 % spent")."""
    b = binding(key, folded, day)
    done = fired(key, b.window)
    last_band = all(q in done or q >= 100 for q in thresholds(key))
    out = []
    for p in thresholds(key):
        if p in done:
            continue
        t = b.cents(p)
        fits = need <= true_room
        if (fits and t <= b.used + need) or (not fits and (t <= b.used or (p >= 100 and last_band))):
            out.append(p)
    return out


def usage_note(window: str, percents: set[int], used: int, at: datetime) -> str:
    """`alerts_usage`: what the marker's commit knew about the crossing, for the sweeper."""
    iso = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"window": window, "percents": sorted(percents), "used": used, "at": iso}, separators=(",", ":"))


def read_usage_note(text: str | None) -> dict[str, object]:
    try:
        note = json.loads(text or "{}")
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def op_mark_fired(key: KeyRecord, window: str, percents: set[int], note: str = "") -> Operation:
    """If-Match merge of the key row's `alerts_fired` (and `alerts_usage`): a concurrent marker (or any
    change) fails it."""
    merged = fired(key, window) | percents
    entity = {"PartitionKey": key.key_id, "RowKey": KEY_ROW, "alerts_fired": marker(window, merged)}
    if note:
        entity["alerts_usage"] = note
    return ("update", entity,
            {"mode": UpdateMode.MERGE, "etag": key.etag, "match_condition": MatchConditions.IfNotModified})
