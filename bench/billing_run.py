"""A 1,000-customer billing run end to end through devhost vs a plain direct fan-out.

Run: ``python -m bench.billing_run`` (or ``make bench-billing``). Starts Azurite,
localstripe and devhost (the real function_app.py), seeds N customers with cards, then:

1. direct: list the customers (pages of 100, filter by plan) and confirm one payment
   intent per customer with its card, `--parallel` at a time, against a twin localstripe
   seeded with the same customers (both sides start from the same store; see `bench.stack`);
2. spendgate: ``POST /api/billing/runs`` for the same customers with
   ``max_parallel=--parallel`` and polls ``GET /api/billing/runs/{id}`` until it finishes.

It prints both wall times and their ratio, and checks for duplicates by counting the
payment intents in localstripe: exactly one per customer for the run (and for direct).
It does this for `--rounds` pairs (3 by default, each on freshly started, empty localstripes
on the same ports) and reports the median ratio: on a shared 2-core VM the speed of the cores
drifts from minute to minute, and one pair can land on either side of the drift.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stack import STRIPE_SECRET, Stack, cpu_delta, running_stack
from devhost.seed import iter_objects, seed_customers

AMOUNT = 500
# Each status poll is two requests inside devhost (the route, then the Durable client's call to
# the management API) and storage reads: polling at 10/s cost the run it measured ~1 ms of CPU
# per customer. At 4/s the wall time reads at most 0.25 s long.
POLL_SECONDS = 0.25
FINISHED = ("Completed", "Failed", "Terminated")


def seed(base_url: str, n: int, plan: str) -> None:
    chunks = [(start, min(100, n - start + 1)) for start in range(1, n + 1, 100)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda c: seed_customers(base_url, STRIPE_SECRET, c[1], plan=plan, start=c[0]), chunks))


def list_customers(client: httpx.Client, plan: str) -> list[dict[str, Any]]:
    return [c for c in iter_objects("", "", "customers", client=client) if (c.get("metadata") or {}).get("plan") == plan]


def card_of(customer: dict[str, Any]) -> str:
    """The seeded customer's card: modern (invoice_settings.default_payment_method) or legacy (default_source)."""
    card = (customer.get("invoice_settings") or {}).get("default_payment_method") or customer.get("default_source")
    if not isinstance(card, str):
        raise RuntimeError(f"seeded customer {customer.get('id')} has no card")
    return card


def direct_fan_out(stack: Stack, plan: str, parallel: int, tag: str) -> float:
    start = time.perf_counter()
    with httpx.Client(base_url=stack.twin_stripe.url, auth=(STRIPE_SECRET, ""), timeout=60,
                      limits=httpx.Limits(max_connections=parallel)) as client:
        customers = list_customers(client, plan)

        def charge(c: dict[str, Any]) -> None:
            r = client.post("/v1/payment_intents", data={
                "amount": AMOUNT, "currency": "usd", "customer": c["id"], "payment_method": card_of(c),
                "confirm": "true", "off_session": "true", "metadata[bench]": tag})
            if r.status_code != 200:
                raise RuntimeError(f"direct charge failed: {r.status_code} {r.text[:200]}")

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(charge, customers))
    return time.perf_counter() - start


def billing_run(stack: Stack, plan: str, n: int, parallel: int, timeout: float) -> tuple[float, dict[str, Any]]:
    body = {"billing_period": time.strftime("%Y-%m", time.gmtime()),
            "customer_query": {"metadata": {"plan": plan}, "amount_cents": AMOUNT},
            "budget_usd": n * AMOUNT / 100 * 2, "max_parallel": parallel}
    with httpx.Client(base_url=stack.url, headers=stack.admin_headers, timeout=60) as client:
        start = time.perf_counter()
        resp = client.post("/api/billing/runs", json=body)
        if resp.status_code != 202:
            raise RuntimeError(f"run refused: {resp.status_code} {resp.text[:300]}")
        instance_id = resp.json()["id"]
        deadline = start + timeout
        while True:
            run = client.get(f"/api/billing/runs/{instance_id}").raise_for_status().json()
            if run["runtime_status"] in FINISHED:
                return time.perf_counter() - start, run
            if time.perf_counter() > deadline:
                raise RuntimeError(f"run {instance_id} still {run['runtime_status']} after {timeout:.0f}s")
            time.sleep(POLL_SECONDS)


def payment_intents(base_url: str) -> list[dict[str, Any]]:
    return list(iter_objects(base_url, STRIPE_SECRET, "payment_intents"))


@dataclass
class Round:
    """One direct fan-out and one billing run over the same number of fresh customers."""

    direct: float
    wall: float
    run: dict[str, Any]
    cpu_direct: str
    cpu_run: str
    duplicates: int
    charged_customers: int
    direct_intents: int

    @property
    def ratio(self) -> float:
        return self.wall / self.direct


def one_round(stack: Stack, args: argparse.Namespace) -> Round:
    plan, tag = "bench" + uuid.uuid4().hex[:6], "direct-" + uuid.uuid4().hex[:6]
    t = time.perf_counter()
    for svc in (stack.localstripe, stack.twin_stripe):  # the same customers in both
        seed(svc.url, args.customers, plan)
    print(f"seeded {args.customers} customers (twice) in {time.perf_counter() - t:.1f}s", flush=True)
    cpu0 = stack.cpu()
    direct = direct_fan_out(stack, plan, args.parallel, tag)
    cpu1 = stack.cpu()
    print(f"direct fan-out: {direct:.1f}s", flush=True)
    wall, run = billing_run(stack, plan, args.customers, args.parallel, args.timeout)
    cpu2 = stack.cpu()
    print(f"billing run {run['instance_id']}: {run['runtime_status']} in {wall:.1f}s", flush=True)
    intents = payment_intents(stack.localstripe.url) + payment_intents(stack.twin_stripe.url)
    run_id = run["instance_id"]
    ours = [pi for pi in intents if (pi.get("metadata") or {}).get("orchestration_id") == run_id]
    per_customer = Counter(pi["customer"] for pi in ours)
    return Round(
        direct=direct,
        wall=wall,
        run=run,
        cpu_direct=cpu_delta(cpu0, cpu1, args.customers),
        cpu_run=cpu_delta(cpu1, cpu2, args.customers),
        duplicates=sum(c - 1 for c in per_customer.values() if c > 1),
        charged_customers=len(per_customer),
        direct_intents=sum(1 for pi in intents if (pi.get("metadata") or {}).get("bench") == tag),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="direct + run pairs; the ratio is their median")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    with running_stack("billing") as stack:
        rounds = []
        for n in range(1, args.rounds + 1):
            print(f"--- round {n} of {args.rounds}", flush=True)
            if n > 1:
                stack.fresh_stripes()
            rounds.append(one_round(stack, args))
    print()
    print(f"customers={args.customers} parallel={args.parallel} rounds={args.rounds}")
    ok = True
    for n, r in enumerate(rounds, 1):
        counts = {k: v for k, v in ((r.run.get("output") or {}).get("counts") or {}).items() if v}
        print(f"round {n}:")
        print(f"  direct fan-out to localstripe   {r.direct:7.1f} s  ({args.customers / r.direct:6.1f} charges/s)")
        print(f"  billing run through spendgate  {r.wall:7.1f} s  ({args.customers / r.wall:6.1f} charges/s)"
              f"  outcomes {counts}")
        print(f"  CPU per customer, direct:      {r.cpu_direct}")
        print(f"  CPU per customer, billing run: {r.cpu_run}")
        print(f"  payment intents: run {r.charged_customers} customers charged, {r.duplicates} duplicates;"
              f" direct {r.direct_intents}")
        print(f"  ratio {r.ratio:.2f}")
        ok = ok and (r.run["runtime_status"] == "Completed" and r.duplicates == 0
                     and r.charged_customers == args.customers and counts.get("charged") == args.customers
                     and r.direct_intents == args.customers)
    print(f"ratios by round: {', '.join(f'{r.ratio:.2f}' for r in rounds)}"
          " (the machine's speed drifts between minutes; the median is the figure)")
    print(f"billing_ratio={statistics.median(r.ratio for r in rounds):.2f}")
    print(f"duplicates={sum(r.duplicates for r in rounds)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
