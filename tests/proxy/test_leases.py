"""Headroom leases on real Azurite: the cap over many instances (proxy/leases.py, docs/ledger.md).

The multi-process tests start real processes (`tests/proxy/lease_worker.py`), each with its own
storage client and `LeaseLedger`, as Function App instances would be. Every assertion reads the
key row and the lease rows back from Azurite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from bench.common import new_key, reserve_ops, utcnow
from core.errors import SpendgateError
from core.settings import Settings
from core.storage import table_service_from_connection_string
from devhost.services import REPO_ROOT, Service
from proxy.lease_rows import split
from proxy.leases import LeaseLedger, partition_counters, read_partition
from proxy.ledger import _Intent, current
from proxy.store import Conflict, KeyRecord, LedgerStore

pytestmark = pytest.mark.integration
AMOUNT = 100


@dataclass
class Table:
    conn: str
    prefix: str
    store: LedgerStore

    def spec(self, key: KeyRecord, **extra: Any) -> dict[str, Any]:
        return {"conn": self.conn, "prefix": self.prefix, "key_id": key.key_id, "amount": AMOUNT,
                "tag": uuid.uuid4().hex[:8], **extra}

    def new_store(self) -> LedgerStore:
        """Another instance's client."""
        return LedgerStore(table_service_from_connection_string(self.conn), self.store_settings)

    @property
    def store_settings(self) -> Settings:
        return Settings.from_mapping({"AzureWebJobsStorage": self.conn, "SPENDGATE_TABLE_PREFIX": self.prefix,
                                      "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_API_BASE": "http://127.0.0.1:9"})


@pytest.fixture
def table(azurite: Service) -> Table:
    conn = azurite.extra["connection_string"]
    prefix = "ls" + uuid.uuid4().hex[:10]  # a table per test: Azurite scans the whole table for a partition query
    t = Table(conn, prefix, None)  # type: ignore[arg-type]
    t.store = t.new_store()
    return t


class Workers:
    """Worker processes released together; their JSON answers."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-m", "tests.proxy.lease_worker", json.dumps(s)],
                                       cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for s in specs]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def send(self, line: str, procs: list[subprocess.Popen[str]] | None = None) -> None:
        for p in procs or self.procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()

    def read(self, procs: list[subprocess.Popen[str]] | None = None) -> list[dict[str, Any]]:
        out = []
        for p in procs or self.procs:
            assert p.stdout is not None
            out.append(json.loads(p.stdout.readline()))
        return out

    def finish(self) -> list[dict[str, Any]]:
        reports = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=180)
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
        return reports

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def workers() -> Iterator[list[Workers]]:
    started: list[Workers] = []
    yield started
    for w in started:
        w.stop()


def start(started: list[Workers], specs: list[dict[str, Any]]) -> Workers:
    w = Workers(specs)
    started.append(w)
    return w


def row_violations(key: KeyRecord, leases: list[Any], day: str) -> list[str]:
    """Each row's own bound: key row spent + pending + leased ≤ cap; each lease spent + pending ≤ grant."""
    bad = []
    c = current(key.counters, day)
    if c.window_spent + c.window_pending + c.window_leased > key.daily_cap_cents:
        bad.append(f"key row {c}")
    bad += [f"lease {x}" for x in leases if x.spent + x.pending > x.grant]
    return bad


def false_refusals(reports: list[dict[str, Any]]) -> int:
    """Refusals that returned before a reservation that was still admitted had begun (nothing is
    released in these tests, so room only shrinks: that reservation proves there was room)."""
    last_admission_began = max((began for r in reports for _, began in r["admitted"]), default=0.0)
    return sum(1 for r in reports for t in r["refusals"] if t < last_admission_began)


ISSUED = pytest.mark.parametrize("issued", [True, False], ids=["issued-with-leases", "leases-on-first-use"])


@ISSUED
def test_spent_pending_and_leased_stay_within_the_cap_at_every_commit(table: Table, workers: list[Workers],
                                                                      issued: bool) -> None:
    """8 instances × 4 callers race a cap of 300 reservations; a reader samples the partition meanwhile."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 300 * AMOUNT, leases=issued)
    w = start(workers, [table.spec(key, mode="race", callers=4) for _ in range(8)])
    violations: list[str] = []
    samples = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            row, leases = read_partition(table.store, key.key_id)
            assert row is not None
            violations.extend(row_violations(row, leases, day))
            samples[0] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    w.send("go")
    reports = w.finish()
    stop.set()
    watcher.join()
    assert violations == [] and samples[0] > 0
    admitted = [k for r in reports for k, _ in r["admitted"]]
    assert len(admitted) == 300 and not any(r["other"] for r in reports)
    assert sum(len(r["refusals"]) for r in reports) == 32  # every caller ends refused
    assert false_refusals(reports) == 0
    c = partition_counters(table.store, key.key_id, day)
    assert c.window_pending == c.total_pending == 300 * AMOUNT and c.window_spent == 0
    records = table.store.idem_records(key.key_id, {"in_flight"})
    assert sorted(r.idempotency_key for r in records) == sorted(admitted)


@ISSUED
def test_32_processes_racing_for_the_last_cents_never_overspend(table: Table, workers: list[Workers],
                                                                issued: bool) -> None:
    day = utcnow().date().isoformat()
    key = new_key(table.store, 100_000, leases=issued)
    first = LeaseLedger(table.store, reaper=False)  # spend all but 1,000 cents from another instance first
    first.reserve(key, 99_000, day, reserve_ops(key.key_id, "most", 99_000, day))
    first.close()
    w = start(workers, [table.spec(key, mode="race", callers=1, amount=70) for _ in range(32)])
    w.send("go")
    reports = w.finish()
    admitted = [k for r in reports for k, _ in r["admitted"]]
    assert len(admitted) == 1_000 // 70 == 14  # 980 cents: the 20 left fit no one
    assert sum(len(r["refusals"]) for r in reports) == 32 and not any(r["other"] for r in reports)
    assert false_refusals(reports) == 0
    c = partition_counters(table.store, key.key_id, day)
    assert c.window_pending == 99_000 + 14 * 70 <= 100_000
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and row_violations(row, leases, day) == []


def test_each_alert_threshold_is_committed_once_whichever_process_reaches_it(
    table: Table, workers: list[Workers]
) -> None:
    """8 processes x 4 callers spend a key to its cap: 50, 80 and 100 % are each committed by exactly one
    instance, at exactly their usage, and the key row's marker holds all three (proxy/alert_bands.py)."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 200 * AMOUNT)
    w = start(workers, [table.spec(key, mode="race", callers=4, amount=AMOUNT) for _ in range(8)])
    w.send("go")
    reports = w.finish()
    assert sum(len(r["admitted"]) for r in reports) == 200 and not any(r["other"] for r in reports)
    assert false_refusals(reports) == 0
    fired = sorted(tuple(f) for r in reports for f in r["fired"])
    assert fired == [(50, 100 * AMOUNT), (80, 160 * AMOUNT), (100, 200 * AMOUNT)], fired
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and row.alerts_fired == f"{day}:50,80,100" and row_violations(row, leases, day) == []


def test_no_refusal_while_the_partition_has_room(table: Table) -> None:
    """The room is spread over many leases, one held by another instance: a request for all of it fits."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 64_000)
    a = LeaseLedger(table.new_store(), reaper=False)
    b = LeaseLedger(table.new_store(), reaper=False)
    a.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "a-1", AMOUNT, day))  # a holds a lease now
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and len(leases) > 8 and max(x.room for x in leases) < 5_000
    b.reserve(key, 5_000, day, reserve_ops(key.key_id, "b-1", 5_000, day))  # more than any one lease holds
    b.reserve(key, 64_000 - 5_100, day, reserve_ops(key.key_id, "b-2", 64_000 - 5_100, day))  # every cent left
    with pytest.raises(SpendgateError) as refused:
        a.reserve(key, 1, day, reserve_ops(key.key_id, "a-2", 1, day))
    assert refused.value.code == "spend_cap_exceeded"
    assert partition_counters(table.store, key.key_id, day).window_pending == 64_000


@ISSUED
def test_a_returned_revoke_stops_the_next_reservation_in_every_process(table: Table, workers: list[Workers],
                                                                       issued: bool) -> None:
    day = utcnow().date().isoformat()
    key = new_key(table.store, 100 * AMOUNT, leases=issued)
    w = start(workers, [table.spec(key, mode="hold", count=2) for _ in range(4)])
    w.send("go")
    assert all(r["outcomes"] == ["admitted", "admitted"] for r in w.read())  # each holds a lease now
    table.store.mark_revoked(key.key_id, utcnow())  # what VaultService.revoke does
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and row.revoked_at is not None and leases and all(x.revoked_at for x in leases)
    w.send("reserve")  # each instance reserves on the key row it remembers from before the revoke
    assert [r["outcome"] for r in w.read()] == ["revoked"] * 4
    assert partition_counters(table.store, key.key_id, day).window_pending == 8 * AMOUNT
    assert len(table.store.idem_records(key.key_id, {"in_flight"})) == 8


def test_exactly_one_record_per_request_whichever_process_takes_it(table: Table, workers: list[Workers]) -> None:
    day = utcnow().date().isoformat()
    key = new_key(table.store, 1_000 * AMOUNT)
    keys = [f"order-{n}" for n in range(30)]
    w = start(workers, [table.spec(key, mode="keys", keys=keys) for _ in range(6)])
    w.send("go")
    reports = w.finish()
    for k in keys:
        outcomes = Counter(r["outcomes"][k] for r in reports)
        assert outcomes == {"admitted": 1, "duplicate": 5}, (k, outcomes)
    records = table.store.idem_records(key.key_id, {"in_flight"})
    assert sorted(r.idempotency_key for r in records) == sorted(keys)
    assert partition_counters(table.store, key.key_id, day).window_pending == 30 * AMOUNT


def test_a_killed_process_strands_its_lease_only_until_it_expires(table: Table, workers: list[Workers]) -> None:
    """One lease (a small cap); its holder is killed. Until the lease expires another instance still
    reserves on it (If-Match, without taking it over); after, another instance claims it."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 1_000)  # 1,000 // (100 × 8): one lease
    w = start(workers, [table.spec(key, mode="hold", count=1, ttl=2)])
    w.send("go")
    dead_owner = w.read()[0]["owner"]
    w.procs[0].kill()
    w.procs[0].wait()
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and [x.owner for x in leases] == [dead_owner]
    other = LeaseLedger(table.new_store(), reaper=False)
    other.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "while-held", AMOUNT, day))
    assert [x.owner for x in read_partition(table.store, key.key_id)[1]] == [dead_owner]
    time.sleep(2.5)  # the killed holder's lease expires (its ttl is 2 s)
    later = LeaseLedger(table.new_store(), reaper=False)
    for n in range(8):  # everything left: 1,000 − 2 × 100
        later.reserve(key, AMOUNT, day, reserve_ops(key.key_id, f"after-{n}", AMOUNT, day))
    assert [x.owner for x in read_partition(table.store, key.key_id)[1]] == [later.owner]
    with pytest.raises(SpendgateError):
        later.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "one-too-many", AMOUNT, day))
    c = partition_counters(table.store, key.key_id, day)
    assert c.window_pending == 1_000  # the killed holder's reservation still counts


def test_a_new_day_with_leases(table: Table) -> None:
    """Daily window and lifetime cap across a UTC day change, with leases held by two instances."""
    today = utcnow().date()
    d1, d2, d3 = (str(today + timedelta(days=n)) for n in range(3))
    key = replace(new_key(table.store, 1_000), total_cap_cents=2_500)
    table.store.table.update_entity({"PartitionKey": key.key_id, "RowKey": "key", "total_cap_cents": 2_500})
    key = table.store.read_key(key.key_id)
    assert key is not None
    a = LeaseLedger(table.new_store(), reaper=False)
    b = LeaseLedger(table.new_store(), reaper=False)
    for n in range(3):
        a.reserve(key, 300, d1, reserve_ops(key.key_id, f"d1-{n}", 300, d1))
    with pytest.raises(SpendgateError):
        b.reserve(key, 200, d1, reserve_ops(key.key_id, "d1-big", 200, d1))  # 100 left today
    a.settle(key, 300, d1, [])
    b.reserve(key, 1_000, d2, reserve_ops(key.key_id, "d2-0", 1_000, d2))  # a new day: the window is whole again
    with pytest.raises(SpendgateError):
        a.reserve(key, 1, d2, reserve_ops(key.key_id, "d2-1", 1, d2))
    c = partition_counters(table.store, key.key_id, d2)
    assert (c.window_spent, c.window_pending, c.total_spent, c.total_pending) == (0, 1_000, 300, 1_600)
    b.settle(key, 300, d1, [])  # yesterday's reservation settles: only the lifetime totals move
    c = partition_counters(table.store, key.key_id, d2)
    assert (c.window_spent, c.window_pending, c.total_spent, c.total_pending) == (0, 1_000, 600, 1_300)
    with pytest.raises(SpendgateError):  # the lifetime cap: 2,500 − 600 − 1,300 = 600 left
        a.reserve(key, 700, d3, reserve_ops(key.key_id, "d3-big", 700, d3))
    b.reserve(key, 600, d3, reserve_ops(key.key_id, "d3-0", 600, d3))
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and row_violations(row, leases, d3) == []
    c = partition_counters(table.store, key.key_id, d3)
    assert c.total_spent + c.total_pending == 2_500
    with pytest.raises(Conflict):  # a caller whose clock is behind the key's window: fail closed, never reopen d1
        a.reserve(key, 1, d1, reserve_ops(key.key_id, "late-d1", 1, d1))


def test_the_hot_path_is_one_transaction_per_reservation_while_a_lease_is_held(table: Table) -> None:
    day = utcnow().date().isoformat()
    key = new_key(table.store, 10_000 * AMOUNT)
    store = table.new_store()
    ledger = LeaseLedger(store, reaper=False)
    ledger.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "warm", AMOUNT, day))  # creates and claims a lease
    calls: Counter[str] = Counter()
    for name in ("submit", "read_key", "read_row", "key_and_lease_entities", "read_idem"):
        real = getattr(store, name)
        setattr(store, name, lambda *a, _real=real, _name=name, **kw: (calls.update([_name]), _real(*a, **kw))[1])
    for n in range(20):
        ledger.reserve(key, AMOUNT, day, reserve_ops(key.key_id, f"hot-{n}", AMOUNT, day))
        ledger.settle(key, AMOUNT, day, [])
    assert calls == {"submit": 40}


def test_a_leader_whose_reservation_committed_hands_a_short_batch_mate_to_the_next_leader(table: Table) -> None:
    """Group commit on a lease (proxy/leases.py `_commit`): a batch's leader returns as soon as its own
    call is done; a batch-mate still short of room goes back to the head of the queue, to lead its own
    next round, instead of holding the leader's caller through its wait or its refusal."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 100 * AMOUNT)
    ledger = LeaseLedger(table.new_store(), reaper=False)
    ledger.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "warm", AMOUNT, day))  # creates and claims a lease
    lane = ledger._lane(key.key_id)
    mine = _Intent("reserve", key, AMOUNT, day, reserve_ops(key.key_id, "fits", AMOUNT, day))
    big = _Intent("reserve", key, 99 * AMOUNT, day, reserve_ops(key.key_id, "too-big", 99 * AMOUNT, day))
    lane.leader = mine
    ledger._commit(lane, [mine, big])
    assert mine.finished and mine.error is None
    assert not big.finished and list(lane.queue) == [big]  # it leads next: refused only in its own round
    lane.queue.clear()
    lane.leader = big
    ledger._commit(lane, [big])
    assert isinstance(big.error, SpendgateError) and big.error.code == "spend_cap_exceeded"  # 98 left, not 99
    assert partition_counters(table.store, key.key_id, day).window_pending == 2 * AMOUNT  # "warm" and "fits"


def test_conflict_for_a_stale_row_is_not_a_refusal(table: Table) -> None:
    """A caller's row from before the leases existed (KnownKeys) is only an If-Match base."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 50 * AMOUNT)
    a = LeaseLedger(table.new_store(), reaper=False)
    a.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "first", AMOUNT, day))
    b = LeaseLedger(table.new_store(), reaper=False)
    try:
        b.reserve(key, 49 * AMOUNT, day, reserve_ops(key.key_id, "rest", 49 * AMOUNT, day))  # stale `key`
    except Conflict:
        fresh = table.store.read_key(key.key_id)
        assert fresh is not None
        b.reserve(fresh, 49 * AMOUNT, day, reserve_ops(key.key_id, "rest", 49 * AMOUNT, day))
    assert partition_counters(table.store, key.key_id, day).window_pending == 50 * AMOUNT


def test_an_issued_key_has_its_leases_and_an_instance_claims_one_with_point_reads(table: Table) -> None:
    """Leases made with the key (as the vault issues it): the first reservation of an instance
    claims one by a point read and commits, with no read of the partition and no key row write."""
    day = utcnow().date().isoformat()
    key = new_key(table.store, 64_000, leases=True)
    row, leases = read_partition(table.store, key.key_id)
    # Only the room below the first alert threshold (50 %, one cent short: $319.99) is leased
    # (proxy/alert_bands.py), in whole dollars ($11 or $10 each; the 99 cents stay on the key row).
    assert row is not None and row.counters.leases == len(leases) == 31
    assert sorted(x.grant for x in leases) == [1_000] * 22 + [1_100] * 9 and not any(x.owner for x in leases)
    assert row.counters.window_leased == 31_900
    store = table.new_store()
    ledger = LeaseLedger(store, reaper=False)
    calls: Counter[str] = Counter()
    for name in ("submit", "read_key", "read_row", "key_and_lease_entities"):
        real = getattr(store, name)
        setattr(store, name, lambda *a, _real=real, _name=name, **kw: (calls.update([_name]), _real(*a, **kw))[1])
    ledger.reserve(key, AMOUNT, day, reserve_ops(key.key_id, "first", AMOUNT, day))
    assert calls == {"read_row": 1, "submit": 1}
    row, leases = read_partition(table.store, key.key_id)
    assert row is not None and row.etag == key.etag  # the key row was not written
    assert [x.owner for x in leases if x.owner] == [ledger.owner]
    assert partition_counters(table.store, key.key_id, day).window_pending == AMOUNT


def test_the_vault_issues_a_key_with_its_lease_rows(table: Table) -> None:
    from proxy.vault import VaultService

    vault = VaultService(table_service_from_connection_string(table.conn), table.store_settings)
    issued = vault.issue({"vendor": "stripe", "label": "leases", "daily_usd_cap": 25, "expires_in": "2h",
                          "allowed_endpoints": ["POST /v1/payment_intents"]})
    row, leases = read_partition(table.store, issued["key_id"])
    # The room below the first alert threshold ($12.49 of $25: 50 %, one cent short, proxy/alert_bands.py)
    # in leases of at least $10: one.
    assert row is not None and len(leases) == row.counters.leases == 1
    assert [x.grant for x in leases] == [1_200] and row.counters.window_leased == 1_200  # whole dollars
    described = vault.describe(issued["key_id"])
    assert (described["spent_cents"], described["pending_cents"], described["remaining_cents"]) == (0, 0, 2_500)


def test_grants_are_split_in_whole_charges_and_never_into_fragments() -> None:
    """A band's room over the leases in use (proxy/lease_room.py `_grant_next_band`): whole units,
    the remainder (less than one unit) left on the key row; with less than a unit per lease, a unit
    each to the first ones rather than a few cents to every one, which no charge could use."""
    assert split(35_999, 32, 100) == [1_200] * 7 + [1_100] * 25  # 359 charges of $1; 99 cents stay
    assert split(100, 32, 100) == [100] + [0] * 31  # the cap's last charge: whole, in one lease
    assert split(250, 4, 100) == [100, 100, 0, 0]
    assert split(99, 3, 100) == [0, 0, 0]
    assert split(1_000, 3, 0) == [333, 333, 333]  # no unit known: equal cents

