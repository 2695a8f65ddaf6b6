"""One hot key over many processes: the ledger split over P instances × C callers, vs raw writes.

Run: ``python -m bench.scaleout`` (or ``make bench-scaleout``). Starts its own Azurite, then for
each layout P × C with P × C = 32 (P ∈ 1, 2, 4, 8, 16, 32) starts P worker processes, each with
its own storage client and its own ledger, standing in for Function App instances (on Flex
Consumption an instance often holds a single proxied charge):

- ledger: every caller reserves on ONE key exactly as the proxy does (the reservation with its
  in_flight idempotency record create as the extra op; `Conflict` → re-read the key row, retry)
  until it is refused; the key's cap is K reservations. The ledger is the one the proxy builds
  (`proxy.ledger.shared_group_ledger`), or with ``--ledger group`` the plain `GroupLedger`;
- raw: every caller upserts distinct rows for a fixed time: the machine's ceiling for that
  many processes and callers (no contention, nothing shared);
- floor (with ``--floor``): every caller commits what one admitted reservation on a lease held
  alone costs, over and over: its own lease row (If-Match) and an idempotency record, ONE
  transaction, nothing shared. What the ledger would reach if finding room cost nothing.

Throughput is admitted reservations per second from the start signal to the last admission.
After each ledger trial it reads the partition back (the key row and every lease row) and checks
that the reserved cents stay within the cap and that there is exactly one idempotency record per
admitted reservation. A refusal is counted false when a reservation that began after the refusal
returned was still admitted (nothing is released in the trial, so room only shrinks: there was
room at the refusal), or when room for one more reservation is left at the end.

Ends with machine-readable lines: ``scaleout_vs_raw=`` (ledger at 32 × 1 ÷ raw at 32 × 1),
``scaleout_ratio=`` (ledger 32 × 1 ÷ ledger 1 × 32), ``overspend_cents=`` and
``false_refusals=`` (all layouts). Each layout's line also shows the storage calls of all its
workers (transactions, point reads, partition reads and why the ledger made them) and the CPU
seconds per admission of the workers and of Azurite, for the ledger and for raw: on a shared
machine whose speed drifts, CPU per admission says where the time went when rates cannot. With
``SCALEOUT_PROFILE=1`` it also shows one worker's mean time per storage call; with
``SCALEOUT_TIMELINE=1``, each ledger trial's admissions per quarter second (where it stalls: the
alert thresholds' band edges and the cap's last cents); ``SCALEOUT_TRACE`` and ``SCALEOUT_CPROFILE``:
bench/scaleout_trace.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from bench import scaleout_trace
from bench.common import new_key, reserve_ops, utcnow
from bench.stack import cpu_seconds
from core.errors import SpendgateError
from core.settings import Settings
from core.storage import submit_transaction, table_service_from_connection_string
from proxy.lease_rows import Lease, op_write_lease

AMOUNT = 100
LAYOUTS = ((1, 32), (2, 16), (4, 8), (8, 4), (16, 2), (32, 1))
WORKER_DEADLINE = 90.0  # seconds a worker may run after the start signal before it gives up


def settings_for(conn: str, prefix: str = "bench") -> Settings:
    return Settings.from_mapping({"AzureWebJobsStorage": conn, "SPENDGATE_TABLE_PREFIX": prefix,
                                  "STRIPE_SECRET_KEY": "sk_test_bench", "STRIPE_API_BASE": "http://127.0.0.1:9"})


def _timed(fn: Any, into: list[float]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t)
    return timed


# --- worker process -------------------------------------------------------------------------
def worker(spec: dict[str, Any]) -> None:
    """One instance: its own storage client and ledger; C caller threads; results as JSON on stdout."""
    from proxy.ledger import GroupLedger, shared_group_ledger
    from proxy.store import Conflict, LedgerStore

    settings = settings_for(spec["conn"], spec["prefix"])
    tables = table_service_from_connection_string(spec["conn"])
    store = LedgerStore(tables, settings)
    mode, callers = spec["mode"], spec["callers"]
    timings: dict[str, list[float]] = {}
    if mode == "ledger":  # count (and time) every storage call the ledger makes
        for name in ("submit", "read_key", "key_and_lease_entities", "read_row"):
            setattr(store, name, _timed(getattr(store, name), timings.setdefault(name, [])))
    ledger: Any = None
    key = None
    trace = scaleout_trace.install(store) if mode == "ledger" else []
    if mode == "ledger":
        ledger = GroupLedger(store) if spec["ledger"] == "group" else shared_group_ledger(tables, store)
        key = store.read_key(spec["key_id"])  # warm the connection and learn the row (as the proxy does)
        assert key is not None
    elif mode == "floor":
        raw = tables.create_table_if_not_exists("benchscalefloor")
    else:
        raw = tables.create_table_if_not_exists("benchscaleraw")
        raw.upsert_entity({"PartitionKey": "warm", "RowKey": spec["tag"], "v": 0})
    lock = threading.Lock()
    admitted: list[tuple[float, float]] = []  # (began, returned) of each admitted reservation (wall clock)
    refusals: list[float] = []  # end time of each refusal
    stats = {"conflicts": 0, "errors": 0, "timed_out": 0}
    print("ready", flush=True)
    sys.stdin.readline()  # the start signal
    t0 = time.time()
    cpu0 = time.process_time()
    day = utcnow().date().isoformat()

    def reserve_until_refused(i: int) -> None:
        snapshot = key
        seq = 0
        while True:
            if time.time() - t0 > WORKER_DEADLINE:
                with lock:
                    stats["timed_out"] += 1
                return
            idem_key = f"{spec['tag']}-{i}-{seq}"
            began = time.time()
            try:
                ledger.reserve(snapshot, AMOUNT, day, reserve_ops(spec["key_id"], idem_key, AMOUNT, day))
                with lock:
                    admitted.append((began, time.time()))
                seq += 1
            except Conflict:
                with lock:
                    stats["conflicts"] += 1
                snapshot = store.read_key(spec["key_id"]) or snapshot
            except SpendgateError as err:
                if err.code != "spend_cap_exceeded":
                    with lock:
                        stats["errors"] += 1
                    time.sleep(0.01)
                    continue
                with lock:
                    refusals.append(time.time())
                return

    def upsert_for(i: int) -> None:
        seq = 0
        stop = t0 + spec["seconds"]
        while time.time() < stop:
            began = time.time()
            raw.upsert_entity({"PartitionKey": spec["tag"], "RowKey": f"{i}-{seq}", "v": seq})
            with lock:
                admitted.append((began, time.time()))
            seq += 1

    def floor_for(i: int) -> None:
        lease = Lease("floor", f"lease-{spec['tag']}-{i}", day, 10**12, owner=spec["tag"],
                      expires_at=utcnow() + timedelta(seconds=30))
        lease = replace(lease, etag=submit_transaction(raw, [op_write_lease(lease)])[0]["etag"])
        seq = 0
        stop = t0 + spec["seconds"]
        while time.time() < stop:
            began = time.time()
            lease = replace(lease, pending=lease.pending + AMOUNT, expires_at=utcnow() + timedelta(seconds=30))
            ops = [op_write_lease(lease), *reserve_ops("floor", f"{spec['tag']}-{i}-{seq}", AMOUNT, day)]
            lease = replace(lease, etag=submit_transaction(raw, ops)[0]["etag"])
            with lock:
                admitted.append((began, time.time()))
            seq += 1

    body = {"ledger": reserve_until_refused, "floor": floor_for}.get(mode, upsert_for)
    body = scaleout_trace.profiled(body, f"{mode}-{spec['tag']}")
    threads = [threading.Thread(target=body, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu0
    commits = getattr(ledger, "commits", 0)
    extra: dict[str, Any] = {name: getattr(ledger, name, 0) for name in ("key_commits", "partition_reads", "conflicts")}
    extra.update({f"{n}_calls": len(v) for n, v in timings.items()})
    extra.update({f"reads_{why}": n for why, n in getattr(ledger, "reads_by", {}).items()})
    if os.environ.get("SCALEOUT_PROFILE"):
        extra.update({f"{n}_ms": f"{len(v)}x{1000 * sum(v) / len(v):.0f}" for n, v in timings.items() if v})
    if ledger is not None and hasattr(ledger, "close"):
        ledger.close()  # an instance that stops gives its lease back
    print(json.dumps({"admitted": admitted, "refusals": refusals, "commits": commits, "ledger": extra, "cpu": cpu,
                      "trace": trace, **stats}),
          flush=True)


# --- parent ---------------------------------------------------------------------------------
@dataclass
class Trial:
    mode: str
    procs: int
    callers: int
    admitted: int
    seconds: float
    refused: int = 0
    conflicts: int = 0
    commits: int = 0
    overspend: int = 0
    false_refusals: int = 0
    records_ok: bool = True
    timed_out: int = 0
    errors: int = 0
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.admitted / self.seconds if self.seconds > 0 else 0.0


def run_workers(specs: list[dict[str, Any]], timeout: float, server_pid: int) -> tuple[float, list[dict[str, Any]]]:
    """Start every worker, release them together once all are ready; (start time, their reports).

    Each report gains `server_cpu`: the storage server's CPU seconds over the trial (shared by all)."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.scaleout", "--worker", json.dumps(s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for s in specs]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        start = time.time()
        server0 = cpu_seconds(server_pid)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        server = cpu_seconds(server_pid) - server0
        for r in reports:
            r["server_cpu"] = server
        return start, reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def cpu_per(reports: list[dict[str, Any]], admitted: int) -> str:
    """Client and server CPU per admission (ms): where a trial's time went on a CPU-bound machine."""
    if not reports or not admitted:
        return "cpu -"
    clients = sum(r.get("cpu", 0.0) for r in reports)
    return f"cpu/admission client {1000 * clients / admitted:.2f} ms, azurite {1000 * reports[0]['server_cpu'] / admitted:.2f} ms"


def ledger_trial(conn: str, procs: int, callers: int, k: int, kind: str, server_pid: int) -> Trial:
    from proxy.leases import partition_counters
    from proxy.store import LedgerStore

    # Each trial has a table of its own: Azurite answers a query within one partition by scanning
    # the whole table (Azure Table Storage does not), so a layout would otherwise pay for every
    # row the layouts before it wrote.
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench{tag}"
    tables = table_service_from_connection_string(conn)
    store = LedgerStore(tables, settings_for(conn, prefix))
    cap = k * AMOUNT
    key = new_key(store, cap, leases=kind == "proxy")  # keys come from the vault with their lease rows
    specs = [{"mode": "ledger", "conn": conn, "key_id": key.key_id, "callers": callers, "ledger": kind,
              "tag": f"{tag}-{p}", "prefix": prefix} for p in range(procs)]
    start, reports = run_workers(specs, WORKER_DEADLINE + 60, server_pid)
    scaleout_trace.print_bands(f"{procs}x{callers}", reports, k)
    starts = [began for r in reports for began, _ in r["admitted"]]
    last_end = max((ended for r in reports for _, ended in r["admitted"]), default=start)
    refusals = [t for r in reports for t in r["refusals"]]
    last_start = max(starts, default=0.0)
    counters = partition_counters(store, key.key_id, utcnow().date().isoformat())
    reserved = counters.window_spent + counters.window_pending
    records = store.idem_records(key.key_id, {"in_flight"})
    false_refusals = sum(1 for t in refusals if t < last_start)
    if cap - reserved >= AMOUNT:
        false_refusals = len(refusals)
    ends = sorted(ended - start for r in reports for _, ended in r["admitted"])
    if os.environ.get("SCALEOUT_TIMELINE"):  # admissions per 0.25 s, to see where a trial stalls
        buckets = [0] * (int(max(ends, default=0) / 0.25) + 1)
        for e in ends:
            buckets[int(e / 0.25)] += 1
        print(f"  timeline {procs}x{callers} (per 0.25 s): {' '.join(map(str, buckets))}", flush=True)
    quantiles = "/".join(f"{ends[min(len(ends) - 1, int(q * len(ends)))]:.2f}" for q in (0.1, 0.5, 0.9, 1.0)) \
        if ends else "-"
    names = ["key_commits", "partition_reads", "conflicts", "submit_calls", "read_key_calls",
             "key_and_lease_entities_calls", "read_row_calls"]
    names += sorted({n for r in reports for n in r["ledger"] if n.startswith("reads_")})
    sums = {name: sum(r["ledger"].get(name, 0) for r in reports) for name in names}
    timing = {n: v for n, v in reports[0]["ledger"].items() if n.endswith("_ms")}  # one worker's, when profiled
    detail = f"admitted by s (10/50/90/100%): {quantiles}; {cpu_per(reports, len(starts))}; " + ", ".join(f"{k}={v}" for k, v in
                                                                         {**sums, **timing}.items())
    return Trial("ledger", procs, callers, len(starts), last_end - start, len(refusals),
                 sum(r["conflicts"] for r in reports), sum(r["commits"] for r in reports),
                 max(0, reserved - cap), false_refusals, len(records) == len(starts) == reserved // AMOUNT,
                 sum(r["timed_out"] for r in reports), sum(r["errors"] for r in reports), detail)


def raw_trial(conn: str, procs: int, callers: int, seconds: float, server_pid: int, mode: str = "raw") -> Trial:
    """Raw upserts (or, `mode="floor"`, the floor's transactions) for `seconds`."""
    tag = mode + uuid.uuid4().hex[:8]
    specs = [{"mode": mode, "conn": conn, "callers": callers, "seconds": seconds, "tag": f"{tag}{p}", "prefix": "bench"}
             for p in range(procs)]
    start, reports = run_workers(specs, seconds + 60, server_pid)
    ends = [ended for r in reports for _, ended in r["admitted"]]
    return Trial(mode, procs, callers, len(ends), max(ends, default=start) - start, detail=cpu_per(reports, len(ends)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--layouts", default=",".join(f"{p}x{c}" for p, c in LAYOUTS))
    parser.add_argument("--reservations", type=int, default=1200, help="the key's cap, in reservations")
    parser.add_argument("--raw-seconds", type=float, default=2.5)
    parser.add_argument("--floor", action="store_true", help="also measure the floor: one transaction per admission")
    parser.add_argument("--ledger", choices=("proxy", "group"), default="proxy",
                        help="proxy: the ledger the proxy builds; group: the plain GroupLedger (before leases)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    from devhost.services import start_azurite

    layouts = [tuple(int(x) for x in part.split("x")) for part in args.layouts.split(",")]
    azurite = start_azurite()
    trials: list[Trial] = []
    try:
        conn = azurite.extra["connection_string"]
        for procs, callers in layouts:
            led = ledger_trial(conn, procs, callers, args.reservations, args.ledger, azurite.proc.pid)
            raw = raw_trial(conn, procs, callers, args.raw_seconds, azurite.proc.pid)
            trials += [led, raw]
            floor = ""
            if args.floor:
                fl = raw_trial(conn, procs, callers, args.raw_seconds, azurite.proc.pid, mode="floor")
                trials.append(fl)
                floor = f"; floor {fl.rate:.1f}/s = {fl.rate / raw.rate:.2f} of raw ({fl.detail})"
            print(f"  measured {procs:>2} x {callers:<2} ledger {led.rate:7.1f}/s  raw {raw.rate:7.1f}/s  ({led.detail}; "
                  f"raw: {raw.detail}{floor})", flush=True)
    finally:
        azurite.stop()
    return report(trials, args.ledger)


def report(trials: list[Trial], kind: str) -> int:
    by = {(t.mode, t.procs, t.callers): t for t in trials}
    print()
    print(f"ledger: {'the proxy ledger (headroom leases)' if kind == 'proxy' else 'GroupLedger'}")
    print(f"{'procs x callers':>15} {'ledger/s':>9} {'raw/s':>8} {'vs raw':>7} {'admitted':>8} {'refused':>7} "
          f"{'conflicts':>9} {'commits':>7} {'overspend':>9} {'false_ref':>9} {'records':>7}")
    for t in (t for t in trials if t.mode == "ledger"):
        raw = by[("raw", t.procs, t.callers)]
        print(f"{t.procs:>9} x {t.callers:<3} {t.rate:>9.1f} {raw.rate:>8.1f} {t.rate / raw.rate:>7.2f} "
              f"{t.admitted:>8} {t.refused:>7} {t.conflicts:>9} {t.commits:>7} {t.overspend:>9} "
              f"{t.false_refusals:>9} {'ok' if t.records_ok else 'WRONG':>7}"
              + (f"  timed_out={t.timed_out}" if t.timed_out else "") + (f"  errors={t.errors}" if t.errors else ""))
    ledgers = [t for t in trials if t.mode == "ledger"]
    one, wide = by.get(("ledger", 1, 32)), by.get(("ledger", 32, 1))
    raw_wide = by.get(("raw", 32, 1))
    print()
    print(f"scaleout_vs_raw={wide.rate / raw_wide.rate:.2f}" if wide and raw_wide else "scaleout_vs_raw=nan")
    print(f"scaleout_ratio={wide.rate / one.rate:.2f}" if wide and one else "scaleout_ratio=nan")
    print(f"overspend_cents={sum(t.overspend for t in ledgers)}")
    print(f"false_refusals={sum(t.false_refusals for t in ledgers)}")
    ok = all(t.overspend == 0 and t.false_refusals == 0 and t.records_ok and not t.timed_out for t in ledgers)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
