"""What an alert says: one small JSON document, the same on the queue, in the webhook and in the table.

Schema (version 1; fields are only ever added, docs/approvals.md "Alert payload")::

    {"schema": 1, "id": "alt_<hex>", "type": <type>, "created_at": "<ISO 8601 UTC>",
     "key_id": str | null, "label": str | null, "run_id": str | null, "approval_id": str | null,
     "threshold_percent": int | null, "window": "<YYYY-MM-DD>" | "lifetime" | null,
     "cap_cents": int | null, "spent_cents": int | null, "amount_cents": int | null, "message": str}

Types: `spend_threshold` (a key's spend reached a threshold of its binding cap),
`run_stopped_by_cap`, `key_revoked`, `approval_requested` (a run or a charge waits for a person).
No vault key, no Stripe secret: ids and amounts only.

`id` is stable: derived from the fact the alert reports (`stable_id`: the key and threshold and
window, the approval, the run), so every delivery of one alert carries the same id, whichever path
sent it (the normal one, a retry, the sweeper). Delivery is at least once; consumers deduplicate on it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA = 1
TYPES = ("spend_threshold", "run_stopped_by_cap", "key_revoked", "approval_requested")


@dataclass(frozen=True)
class Alert:
    type: str
    message: str
    created_at: str
    id: str = ""
    key_id: str | None = None
    label: str | None = None
    run_id: str | None = None
    approval_id: str | None = None
    threshold_percent: int | None = None
    window: str | None = None
    cap_cents: int | None = None
    spent_cents: int | None = None
    amount_cents: int | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown alert type {self.type!r}")
        if not self.id:
            object.__setattr__(self, "id", "alt_" + secrets.token_hex(12))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def stable_id(*parts: str) -> str:
    """The alert id of a fact: `alt_` + 24 hex digits of sha256 over its parts."""
    return "alt_" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
