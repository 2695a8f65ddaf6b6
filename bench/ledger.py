"""Reservation throughput on ONE key under contention: naive If-Match loop vs spendgate.

Run: ``python -m bench.ledger`` (or ``make bench-ledger``). Starts its own Azurite and
measures, at 1, 8, 32 and 64 concurrent callers on one key:

- naive: read the cap row, check, update it with If-Match, retry on 412;
- spendgate: the proxy's ledger (`LeaseLedger`: group commit on this process's headroom
  lease, proxy/leases.py; ``--ledger group`` measures the plain `GroupLedger` on the key row)
  exactly as the proxy calls it (the reservation with its in_flight idempotency record create
  as the extra op), re-reading on Conflict;
- spendgate+read: the same, preceded by the proxy's per-request key+idempotency read;
- raw: plain upserts to distinct entities (no contention: the machine's write ceiling).

Every contended trial gives the key a cap of K reservations and lets every caller
reserve until it is refused, so each trial has refusals; it checks that exactly K were
admitted and that the row's reserved sum is within the cap. Throughput is admitted
reservations per second up to the last admission. Ends with three machine-readable
lines taken at 32 callers.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import requests
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from bench.common import new_key, reserve_ops, utcnow
from core.errors import SpendgateError
from core.settings import Settings
from devhost.services import start_azurite
from proxy.leases import LeaseLedger, partition_counters
from proxy.ledger import GroupLedger
from proxy.store import Conflict, LedgerStore

AMOUNT = 100
LEVELS = (1, 8, 32, 64)


@dataclass
class Trial:
    method: str
    callers: int
    admitted: int
    refused: int
    conflicts: int
    seconds: float
    cap_cents: int
    reserved_cents: int
    commits: int = 0

    @property
    def rate(self) -> float:
        return self.admitted / self.seconds if self.seconds > 0 else 0.0

    @property
    def overspend(self) -> int:
        return max(0, self.reserved_cents - self.cap_cents)


def table_service(conn: str) -> TableServiceClient:
    """A client whose connection pool fits 64 callers (the default 10 would churn sockets)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=128)
    session.mount("http://", adapter)
    return TableServiceClient.from_connection_string(conn, transport=RequestsTransport(session=session))


def run_callers(n: int, body: Callable[[int, threading.Event], None]) -> float:
    """Run `body` in n threads released together; returns the start time."""
    go = threading.Event()
    threads = [threading.Thread(target=body, args=(i, go)) for i in range(n)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return start


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.admitted = self.refused = self.conflicts = 0
        self.last = 0.0

    def admit(self) -> None:
        with self.lock:
            self.admitted += 1
            self.last = max(self.last, time.perf_counter())

    def add(self, refused: int = 0, conflicts: int = 0) -> None:
        with self.lock:
            self.refused += refused
            self.conflicts += conflicts


def naive_trial(table: TableClient, n: int, k: int) -> Trial:
    pk = "naive" + uuid.uuid4().hex[:12]
    cap = k * AMOUNT
    table.create_entity({"PartitionKey": pk, "RowKey": "cap", "cap": cap, "reserved": 0})
    tally = Tally()

    def body(_i: int, go: threading.Event) -> None:
        go.wait()
        while True:
            e = table.get_entity(pk, "cap")
            if e["reserved"] + AMOUNT > e["cap"]:
                tally.add(refused=1)
                return
            try:
                table.update_entity({"PartitionKey": pk, "RowKey": "cap", "reserved": e["reserved"] + AMOUNT},
                                    mode=UpdateMode.MERGE, etag=e.metadata["etag"],
                                    match_condition=MatchConditions.IfNotModified)
                tally.admit()
            except ResourceModifiedError:
                tally.add(conflicts=1)

    start = run_callers(n, body)
    reserved = table.get_entity(pk, "cap")["reserved"]
    return Trial("naive If-Match loop", n, tally.admitted, tally.refused, tally.conflicts, tally.last - start, cap,
                 reserved)


def spendgate_trial(store: LedgerStore, n: int, k: int, *, with_read: bool, kind: str = "proxy") -> Trial:
    day = utcnow().date().isoformat()
    key = new_key(store, k * AMOUNT, leases=kind != "group")  # as the vault issues keys for the proxy's ledger
    ledger = GroupLedger(store) if kind == "group" else LeaseLedger(store, reaper=False)
    tally = Tally()

    def body(i: int, go: threading.Event) -> None:
        go.wait()
        snapshot = key
        seq = 0
        while True:
            idem_key = f"bench-{i}-{seq}"
            if with_read:  # a key row point read per request (the proxy's, for a key it does not know yet)
                snapshot = store.read_key(key.key_id)
                assert snapshot is not None
            try:
                ledger.reserve(snapshot, AMOUNT, day, reserve_ops(key.key_id, idem_key, AMOUNT, day))
                tally.admit()
                seq += 1
            except Conflict:
                tally.add(conflicts=1)
                snapshot = store.read_key(key.key_id) or snapshot
            except SpendgateError as err:
                assert err.code == "spend_cap_exceeded", err.code
                tally.add(refused=1)
                return

    start = run_callers(n, body)
    reserved_cents = partition_counters(store, key.key_id, day).window_pending  # the key row and its leases
    records = store.idem_records(key.key_id, {"in_flight"})
    if len(records) != tally.admitted:
        raise AssertionError(f"{len(records)} idempotency records for {tally.admitted} admitted reservations")
    name = "spendgate ledger + key read" if with_read else "spendgate ledger"
    return Trial(name, n, tally.admitted, tally.refused, tally.conflicts, tally.last - start, k * AMOUNT,
                 reserved_cents, ledger.commits)


def raw_trial(table: TableClient, n: int, seconds: float) -> Trial:
    pk = "raw" + uuid.uuid4().hex[:12]
    tally = Tally()
    stop_at = [0.0]

    def body(i: int, go: threading.Event) -> None:
        go.wait()
        seq = 0
        while time.perf_counter() < stop_at[0]:
            table.upsert_entity({"PartitionKey": pk, "RowKey": f"{i}-{seq}", "v": seq})
            tally.admit()
            seq += 1

    stop_at[0] = time.perf_counter() + seconds + 0.05
    start = run_callers(n, body)
    return Trial("raw upserts, distinct rows", n, tally.admitted, 0, 0, tally.last - start, 0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--raw-seconds", type=float, default=2.5)
    parser.add_argument("--ledger", choices=("proxy", "group"), default="proxy",
                        help="proxy: the ledger the proxy uses (LeaseLedger); group: the plain GroupLedger")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    azurite = start_azurite()
    try:
        conn = azurite.extra["connection_string"]
        settings = Settings.from_mapping({"AzureWebJobsStorage": conn, "SPENDGATE_TABLE_PREFIX": "bench",
                                          "STRIPE_SECRET_KEY": "sk_test_bench", "STRIPE_API_BASE": "http://127.0.0.1:9"})
        tables = table_service(conn)
        store = LedgerStore(tables, settings)
        naive_table = tables.create_table_if_not_exists("benchnaive")
        raw_table = tables.create_table_if_not_exists("benchraw")
        trials: list[Trial] = []
        for n in levels:
            trials.append(naive_trial(naive_table, n, 60 if n == 1 else 100))
            # ~1 s per contended trial: at ~2,000/s a 600-reservation trial lasted 0.3 s and one
            # scheduling hiccup on the 2 cores could swing its rate by a fifth.
            trials.append(spendgate_trial(store, n, 150 if n == 1 else 2400, with_read=False, kind=args.ledger))
            trials.append(spendgate_trial(store, n, 150 if n == 1 else 400, with_read=True, kind=args.ledger))
            trials.append(raw_trial(raw_table, n, args.raw_seconds))
            for t in trials[-4:]:
                print(f"  measured {t.method:<30} callers={n:<3} {t.rate:8.1f}/s", flush=True)
    finally:
        azurite.stop()
    return report(trials, levels)


def report(trials: list[Trial], levels: list[int]) -> int:
    print()
    print(f"{'method':<30} {'callers':>7} {'per s':>8} {'admitted':>8} {'refused':>7} {'conflicts':>9} "
          f"{'commits':>7} {'cap':>7} {'reserved':>8} {'overspend':>9}")
    for t in trials:
        cap = f"{t.cap_cents}" if t.cap_cents else "-"
        print(f"{t.method:<30} {t.callers:>7} {t.rate:>8.1f} {t.admitted:>8} {t.refused:>7} {t.conflicts:>9} "
              f"{t.commits or '-':>7} {cap:>7} {t.reserved_cents if t.cap_cents else '-':>8} {t.overspend:>9}")
    by = {(t.method, t.callers): t for t in trials}
    raw1 = by.get(("raw upserts, distinct rows", 1))
    print()
    for n in levels:
        sg, naive = by[("spendgate ledger", n)], by[("naive If-Match loop", n)]
        line = f"callers={n:<3} spendgate/naive={sg.rate / naive.rate:6.2f}"
        if raw1:
            line += f"  spendgate/raw_single={sg.rate / raw1.rate:5.2f}"
        line += f"  (with key read: /naive={by[('spendgate ledger + key read', n)].rate / naive.rate:5.2f})"
        print(line)
    contended = [t for t in trials if t.cap_cents]
    exact = all(t.admitted * AMOUNT == t.cap_cents for t in contended)
    print(f"every contended trial admitted exactly its cap: {exact}; every trial had refusals: "
          f"{all(t.refused > 0 for t in contended)}")
    print(f"overspend_cents_all_trials={sum(t.overspend for t in contended)}")
    if 32 in levels:
        sg32, naive32 = by[("spendgate ledger", 32)], by[("naive If-Match loop", 32)]
        print(f"ratio_vs_naive={sg32.rate / naive32.rate:.2f}")
        print(f"ratio_vs_raw_single={sg32.rate / raw1.rate:.2f}" if raw1 else "ratio_vs_raw_single=nan")
        print(f"overspend_cents={sum(t.overspend for t in contended if t.callers == 32)}")
    return 0 if exact and all(t.overspend == 0 for t in contended) else 1


if __name__ == "__main__":
    raise SystemExit(main())
