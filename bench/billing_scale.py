"""How a billing run's wall time and devhost's memory grow with the number of customers.

Run: ``python -m bench.billing_scale`` (default sizes 1,000, 5,000 and 10,000; ``--sizes``).
Starts Azurite, localstripe and devhost (the real function_app.py) once; for each size it
empties localstripe (localstripe slows down as its store grows, so every size starts from the
same state), seeds that many customers with cards, runs ``POST /api/billing/runs`` over them
by ``customer_query`` (the customer list becomes one activity result: ~100 bytes a customer,
so it is well past Table Storage's 64 KiB property limit and lives in a blob) and polls the
run until it finishes. It prints per size: wall time, charges per second, devhost's resident
memory before, at its peak during the run (sampled every 0.1 s) and after, and CPU per customer.

Not a test: the figures depend on the machine and what else runs on it (docs/billing.md).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

from bench.billing_run import POLL_SECONDS, seed
from bench.stack import Stack, cpu_delta, running_stack
from tests.billing.e2e import FINISHED

AMOUNT = 500


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler:
    """Samples a process's RSS every 0.1 s in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_size(stack: Stack, n: int, parallel: int, timeout: float) -> dict[str, Any]:
    import httpx

    stack.fresh_stripes()
    plan = "scale" + uuid.uuid4().hex[:6]
    t = time.perf_counter()
    seed(stack.localstripe.url, n, plan)
    print(f"seeded {n} customers in {time.perf_counter() - t:.1f}s", flush=True)
    body = {"billing_period": time.strftime("%Y-%m", time.gmtime()),
            "customer_query": {"metadata": {"plan": plan}, "amount_cents": AMOUNT},
            "budget_usd": n * AMOUNT / 100 * 2, "max_parallel": parallel}
    pid = stack.devhost.proc.pid
    before, cpu0 = rss_mib(pid), stack.cpu()
    with PeakSampler(pid) as sampler, httpx.Client(base_url=stack.url, headers=stack.admin_headers, timeout=60) as c:
        start = time.perf_counter()
        resp = c.post("/api/billing/runs", json=body)
        if resp.status_code != 202:
            raise RuntimeError(f"run refused: {resp.status_code} {resp.text[:300]}")
        run_id = resp.json()["id"]
        while True:
            run = c.get(f"/api/billing/runs/{run_id}").raise_for_status().json()
            if run["runtime_status"] in FINISHED:
                break
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"run {run_id} still {run['runtime_status']} after {timeout:.0f}s")
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - start
    counts = {k: v for k, v in ((run.get("output") or {}).get("counts") or {}).items() if v}
    row = {"n": n, "wall": wall, "status": run["runtime_status"], "counts": counts, "rss_before": before,
           "rss_peak": sampler.peak, "rss_after": rss_mib(pid), "cpu": cpu_delta(cpu0, stack.cpu(), n)}
    print(f"{n} customers: {run['runtime_status']} in {wall:.1f}s {counts}; devhost RSS MiB before {before:.0f},"
          f" peak {sampler.peak:.0f}, after {row['rss_after']:.0f}; CPU per customer {row['cpu']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with running_stack("scale") as stack:
        rows = [one_size(stack, n, args.parallel, args.timeout) for n in sizes]
    print()
    print(f"parallel={args.parallel}")
    print("customers  status     wall s  charges/s  ms/customer  devhost RSS MiB before/peak/after  CPU per customer")
    ok = True
    for r in rows:
        print(f"{r['n']:9d}  {r['status']:9s} {r['wall']:7.1f}  {r['n'] / r['wall']:9.1f}  {1000 * r['wall'] / r['n']:11.1f}"
              f"  {r['rss_before']:7.0f} / {r['rss_peak']:5.0f} / {r['rss_after']:5.0f}         {r['cpu']}")
        ok = ok and r["status"] == "Completed" and r["counts"].get("charged") == r["n"]
    first, last = rows[0], rows[-1]
    print(f"wall_ratio={last['wall'] / first['wall']:.2f} for {last['n'] / first['n']:.0f}x the customers")
    print(f"peak_rss_growth_mib={last['rss_peak'] - first['rss_peak']:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
