"""Key rows this process has read, so a metered POST can authenticate without reading one.

Why this is safe (docs/proxy.md, "Revocation"; docs/ledger.md): everything authentication
uses from the key row is fixed when the key is issued — the secret's hash, the allowlist,
the caps, the expiry, the label; nothing in spendgate edits them — and revocation is final.
What does change, `revoked_at` and the counters, is never trusted from here: a metered POST
reserves before it forwards, and the reservation commits with If-Match on the key row as
storage has it, so a revoke (which rewrites the row) fails the reservation and the re-read
that follows answers `vault_key_revoked` before anything reaches Stripe. A cached row that
already says revoked or expired is believed (neither ever reverts). Requests that reserve
nothing (GETs, zero-amount POSTs) always read the row, because nothing else would stop them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from azure.data.tables import TableServiceClient

from proxy.store import KeyRecord, LedgerStore, per_ledger_table

KNOWN_KEYS_CAPACITY = 10_000


class KnownKeys:
    """A bounded, thread-safe map key id → the key row as last read by this process."""

    def __init__(self, capacity: int = KNOWN_KEYS_CAPACITY) -> None:
        self._rows: OrderedDict[str, KeyRecord] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._rows.get(key_id)
            if row is not None:
                self._rows.move_to_end(key_id)
            return row

    def put(self, row: KeyRecord) -> None:
        with self._lock:
            self._rows[row.key_id] = row
            self._rows.move_to_end(row.key_id)
            while len(self._rows) > self._capacity:
                self._rows.popitem(last=False)


def shared_known_keys(tables: TableServiceClient, store: LedgerStore) -> KnownKeys:
    """The one KnownKeys per (table service, table) in this process (like the group ledger)."""
    return per_ledger_table(tables, store, KnownKeys)
