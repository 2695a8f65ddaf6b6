"""Group commit on real Azurite: many callers, one key, never over the cap.

Each caller does what the proxy's `_post` does: read the key row and its idempotency
record, then reserve with the in_flight record's create as the extra op, re-reading on
`Conflict`. The assertions read the key row and idempotency rows back from Azurite.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.common import idem_record, new_key, reserve_ops, utcnow
from core.errors import SpendgateError
from core.storage import table_service
from proxy.ledger import GroupLedger, Ledger, TableLedger
from proxy.store import Conflict, LedgerStore, idem_row_key, op_create_idem
from tests.proxy.conftest import Domain

pytestmark = pytest.mark.integration
AMOUNT = 50


def reserve_like_proxy(ledger: Ledger, store: LedgerStore, key_id: str, idem_key: str, day: str) -> str:
    for _attempt in range(60):
        key, record = store.read_key_and_idem(key_id, idem_row_key(idem_key))
        assert key is not None
        if record is not None:
            return "duplicate"
        if key.status(utcnow()) != "active":
            return "revoked"
        try:
            ledger.reserve(key, AMOUNT, day, reserve_ops(key_id, idem_key, AMOUNT, day))
            return "admitted"
        except Conflict:
            continue
        except SpendgateError as err:
            return err.code
    return "gave_up"


def run_all(n: int, call: Callable[[int], str]) -> list[str]:
    start = threading.Barrier(n)

    def one(i: int) -> str:
        start.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def idem_keys(store: LedgerStore, key_id: str) -> set[str]:
    return {r.idempotency_key for r in store.idem_records(key_id, {"in_flight", "ambiguous", "completed"})}


@pytest.fixture
def store(domain: Domain) -> LedgerStore:
    return LedgerStore(domain.tables, domain.settings)


def test_64_concurrent_reservations_admit_exactly_what_fits(store: LedgerStore) -> None:
    day = utcnow().date().isoformat()
    key = new_key(store, daily_cap_cents=20 * AMOUNT)
    ledger = GroupLedger(store)
    outcomes = run_all(64, lambda i: reserve_like_proxy(ledger, store, key.key_id, f"idem-{i}", day))
    counts = Counter(outcomes)
    assert counts == {"admitted": 20, "spend_cap_exceeded": 44}
    row = store.read_key(key.key_id)
    assert row is not None and row.counters.window_pending == 20 * AMOUNT == row.counters.total_pending
    admitted = {f"idem-{i}" for i, o in enumerate(outcomes) if o == "admitted"}
    assert idem_keys(store, key.key_id) == admitted  # records exactly for the admitted ones
    assert ledger.commits < 20  # reservations really were committed together


def test_duplicates_in_a_batch_take_the_conflict_path_alone(store: LedgerStore) -> None:
    day = utcnow().date().isoformat()
    key = new_key(store, daily_cap_cents=100 * AMOUNT)
    for i in range(4):  # these idempotency records already exist: their creates must fail
        store.submit([op_create_idem(idem_record(key.key_id, f"dup-{i}", AMOUNT, day))])
    ledger = GroupLedger(store)
    fresh_key = store.read_key(key.key_id)
    assert fresh_key is not None

    def blind(i: int) -> str:  # reserve without looking first, as a racing duplicate would
        name = f"dup-{i}" if i < 4 else f"new-{i}"
        try:
            ledger.reserve(fresh_key, AMOUNT, day, reserve_ops(key.key_id, name, AMOUNT, day))
            return "admitted"
        except Conflict:
            return "conflict"

    outcomes = run_all(12, blind)
    assert outcomes[:4] == ["conflict"] * 4 and outcomes[4:] == ["admitted"] * 8
    row = store.read_key(key.key_id)
    assert row is not None and row.counters.window_pending == 8 * AMOUNT
    assert idem_keys(store, key.key_id) == {f"dup-{i}" for i in range(4)} | {f"new-{i}" for i in range(4, 12)}

    # concurrent duplicates of the same new key: exactly one is admitted, once
    outcomes = run_all(16, lambda i: reserve_like_proxy(ledger, store, key.key_id, f"twin-{i // 2}", day))
    assert Counter(outcomes) == {"admitted": 8, "duplicate": 8}
    row = store.read_key(key.key_id)
    assert row is not None and row.counters.window_pending == 16 * AMOUNT


def test_two_processes_never_overspend(domain: Domain) -> None:
    """Two ledgers with their own clients (as two instances) plus a plain TableLedger."""
    day = utcnow().date().isoformat()
    stores = [LedgerStore(table_service(domain.settings), domain.settings) for _ in range(3)]
    key = new_key(stores[0], daily_cap_cents=25 * AMOUNT)
    ledgers: list[Ledger] = [GroupLedger(stores[0]), GroupLedger(stores[1]), TableLedger(stores[2])]
    outcomes = run_all(60, lambda i: reserve_like_proxy(ledgers[i % 3], stores[i % 3], key.key_id, f"p-{i}", day))
    assert Counter(outcomes) == {"admitted": 25, "spend_cap_exceeded": 35}
    row = stores[0].read_key(key.key_id)
    assert row is not None and row.counters.window_pending == 25 * AMOUNT
    assert len(idem_keys(stores[0], key.key_id)) == 25


def test_revoke_stops_reservations_prepared_before_it(store: LedgerStore) -> None:
    day = utcnow().date().isoformat()
    key = new_key(store, daily_cap_cents=100 * AMOUNT)
    ledger = GroupLedger(store)
    assert reserve_like_proxy(ledger, store, key.key_id, "before", day) == "admitted"
    stale = store.read_key(key.key_id)  # read while active: the ledger also knows this version
    assert stale is not None
    store.mark_revoked(key.key_id, utcnow())
    with pytest.raises(Conflict):  # the If-Match on the pre-revoke version fails; the re-read sees the revoke
        ledger.reserve(stale, AMOUNT, day, reserve_ops(key.key_id, "after", AMOUNT, day))
    assert reserve_like_proxy(ledger, store, key.key_id, "after", day) == "revoked"
    row = store.read_key(key.key_id)
    assert row is not None and row.counters.window_pending == AMOUNT
    assert idem_keys(store, key.key_id) == {"before"}


def test_concurrent_settles_and_releases_are_grouped(store: LedgerStore) -> None:
    day = utcnow().date().isoformat()
    key = new_key(store, daily_cap_cents=100 * AMOUNT)
    ledger = GroupLedger(store)
    assert set(run_all(32, lambda i: reserve_like_proxy(ledger, store, key.key_id, f"s-{i}", day))) == {"admitted"}
    commits = ledger.commits

    def finish(i: int) -> str:
        for _ in range(60):
            fresh = store.read_key(key.key_id)
            assert fresh is not None
            try:
                (ledger.settle if i % 2 else ledger.release)(fresh, AMOUNT, day, [])
                return "ok"
            except Conflict:
                continue
        return "gave_up"

    assert set(run_all(32, finish)) == {"ok"}
    row = store.read_key(key.key_id)
    assert row is not None
    c = row.counters
    assert (c.window_pending, c.total_pending, c.window_spent, c.total_spent) == (0, 0, 16 * AMOUNT, 16 * AMOUNT)
    assert ledger.commits - commits < 32


def test_batches_respect_the_transaction_op_limit(store: LedgerStore) -> None:
    day = utcnow().date().isoformat()
    key = new_key(store, daily_cap_cents=100 * AMOUNT)
    sizes: list[int] = []
    real_submit = store.submit

    def recording_submit(ops: list) -> list[str]:  # type: ignore[type-arg]
        sizes.append(len(ops))
        return real_submit(ops)

    store.submit = recording_submit  # type: ignore[method-assign]
    ledger = GroupLedger(store, max_ops=5)  # key row + at most 4 reservations per transaction
    outcomes = run_all(24, lambda i: reserve_like_proxy(ledger, store, key.key_id, f"lim-{i}", day))
    assert Counter(outcomes) == {"admitted": 24}
    assert sizes and max(sizes) <= 5 and sum(n - 1 for n in sizes) == 24
    row = store.read_key(key.key_id)
    assert row is not None and row.counters.window_pending == 24 * AMOUNT
