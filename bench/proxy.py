"""Latency the proxy adds to POST /v1/payment_intents, and its storage round trips.

Run: ``python -m bench.proxy`` (or ``make bench-proxy``). Starts Azurite (behind a
counting relay, see `bench.relay`), localstripe and devhost running the real
function_app.py, issues a vault key, then in the same run:

1. 500 calls one at a time, alternating direct-to-localstripe and through the proxy;
2. 500 direct calls with 32 in flight, then 500 proxied calls with 32 in flight.

Direct calls go to a twin localstripe given the same number of calls (see
`bench.stack.running_stack`). CPU per call of each service process is printed too.

It prints p50/p99 of both and their difference, and the storage HTTP requests per
proxied charge (requests reaching Azurite that name the ledger table), which the
design bounds at 3: authenticate (a key row point read, skipped once the process knows
the key: proxy/known_keys.py), reserve + record, settle + audit; under concurrency group
commit makes the last two cheaper still.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.common import median, percentile
from bench.stack import STRIPE_SECRET, Stack, cpu_delta, running_stack

AMOUNT = 100
PARAMS = {"amount": str(AMOUNT), "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}


def direct_call(client: httpx.Client) -> float:
    t = time.perf_counter()
    r = client.post("/v1/payment_intents", data=PARAMS)
    elapsed = time.perf_counter() - t
    if r.status_code != 200 or r.json().get("status") != "succeeded":
        raise RuntimeError(f"direct call failed: {r.status_code} {r.text[:200]}")
    return elapsed


def proxy_call(client: httpx.Client) -> float:
    t = time.perf_counter()
    r = client.post("/api/stripe/v1/payment_intents", data=PARAMS, headers={"Idempotency-Key": uuid.uuid4().hex})
    elapsed = time.perf_counter() - t
    if r.status_code != 200 or r.json().get("status") != "succeeded":
        raise RuntimeError(f"proxied call failed: {r.status_code} {r.text[:200]}")
    return elapsed


def in_flight(n_calls: int, parallel: int, make: Callable[[], httpx.Client], call: Callable[[httpx.Client], float],
              ) -> tuple[list[float], float]:
    """n_calls spread over `parallel` threads (one client each); latencies and wall time."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(_i: int) -> float:
        if not hasattr(local, "client"):
            local.client = make()
            with lock:
                clients.append(local.client)
        return call(local.client)

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        latencies = list(pool.map(one, range(n_calls)))
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    return latencies, wall


def line(name: str, lat: list[float], wall: float | None = None) -> str:
    ms = [x * 1000 for x in lat]
    out = f"{name:<28} n={len(ms):<4} p50={median(ms):7.1f} ms  p99={percentile(ms, 99):7.1f} ms"
    return out + (f"  {len(ms) / wall:6.1f}/s" if wall else "")


def run(stack: Stack, calls: int, parallel: int) -> int:
    issued = httpx.post(f"{stack.url}/api/vault/keys", headers=stack.admin_headers, timeout=30, json={
        "vendor": "stripe", "label": "bench/proxy", "daily_usd_cap": 1_000_000,
        "allowed_endpoints": ["POST /v1/payment_intents"], "expires_in": "2h"})
    issued.raise_for_status()
    vault_key = issued.json()["vault_key"]

    def make_direct() -> httpx.Client:
        return httpx.Client(base_url=stack.twin_stripe.url, auth=(STRIPE_SECRET, ""), timeout=60)

    def make_proxy() -> httpx.Client:
        return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {vault_key}"}, timeout=60)

    with make_direct() as d, make_proxy() as p:
        for _ in range(20):  # warm up both paths (connections, imports, table creation)
            direct_call(d)
            proxy_call(p)
        seq_direct, seq_proxy = [], []
        before = stack.relay.snapshot()
        for _ in range(calls):
            seq_direct.append(direct_call(d))
            seq_proxy.append(proxy_call(p))
        after = stack.relay.snapshot()
    seq_storage = (after[1] - before[1]) / calls
    seq_all = (after[0] - before[0]) / calls

    cpu0 = stack.cpu()
    par_direct, wall_d = in_flight(calls, parallel, make_direct, direct_call)
    cpu1 = stack.cpu()
    before = stack.relay.snapshot()
    par_proxy, wall_p = in_flight(calls, parallel, make_proxy, proxy_call)
    after = stack.relay.snapshot()
    cpu2 = stack.cpu()
    par_storage = (after[1] - before[1]) / calls

    state = httpx.get(f"{stack.url}/api/vault/keys/{issued.json()['key_id']}", headers=stack.admin_headers,
                      timeout=30).json()
    expected = (20 + 2 * calls) * AMOUNT
    print()
    print(f"one at a time ({calls} each, interleaved):")
    print("  " + line("direct to localstripe", seq_direct))
    print("  " + line("through the proxy", seq_proxy))
    print(f"  proxy adds: p50 +{(median(seq_proxy) - median(seq_direct)) * 1000:.1f} ms, "
          f"p99 +{(percentile(seq_proxy, 99) - percentile(seq_direct, 99)) * 1000:.1f} ms")
    print(f"{parallel} in flight ({calls} each):")
    print("  " + line("direct to localstripe", par_direct, wall_d))
    print("  " + line("through the proxy", par_proxy, wall_p))
    print(f"  proxy adds: p50 +{(median(par_proxy) - median(par_direct)) * 1000:.1f} ms, "
          f"p99 +{(percentile(par_proxy, 99) - percentile(par_direct, 99)) * 1000:.1f} ms")
    print(f"  CPU per direct call:  {cpu_delta(cpu0, cpu1, calls)}")
    print(f"  CPU per proxied call: {cpu_delta(cpu1, cpu2, calls)}")
    print(f"ledger spent_cents={state['spent_cents']} pending_cents={state['pending_cents']} "
          f"(expected spent {expected})")
    print(f"storage requests per proxied charge: sequential {seq_storage:.2f} "
          f"(all tables incl. durable engine: {seq_all:.2f}), {parallel} in flight {par_storage:.2f}")
    print(f"storage_round_trips_per_charge={seq_storage:.2f}")
    ok = state["spent_cents"] == expected and state["pending_cents"] == 0 and seq_storage <= 3
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args(argv)
    with running_stack("proxy") as stack:
        return run(stack, args.calls, args.parallel)


if __name__ == "__main__":
    raise SystemExit(main())
