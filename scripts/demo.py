"""`make demo`: bill the seeded local customers through a billing run and follow it.

Assumes `make run` is serving the app on http://localhost:7071. Reads the function key
(`DEVHOST_FUNCTION_KEY`) from local.settings.json (or the sample), starts
`POST /api/billing/runs` for every customer whose `metadata[plan]` matches, draws a
progress bar from the run's custom status and prints the summary, with the run's warnings
(a query matching nobody, a budget below the smallest charge, customers whose currency is
not usd) as soon as the run reports them. Seeded customers have the modern shape (a card
PaymentMethod as `invoice_settings.default_payment_method`).

    python -m scripts.demo [--plan pro] [--amount-cents 2900] [--budget-usd 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from devhost.seed import seed_customers

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("Completed", "Failed", "Terminated")


def local_settings() -> dict[str, str]:
    """The Values of local.settings.json, else of the sample."""
    for name in ("local.settings.json", "local.settings.sample.json"):
        path = ROOT / name
        if path.exists():
            return dict(json.loads(path.read_text()).get("Values", {}))
    return {}


def bar(progress: dict[str, Any], width: int = 40) -> str:
    """`[#####.....]  120/200 charged 118  $3,422.00 of $5,800.00`"""
    done, total = int(progress.get("done", 0)), int(progress.get("total", 0))
    filled = width * done // total if total else 0
    spent, cap = progress.get("spent_cents", 0) / 100, progress.get("cap_cents", 0) / 100
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done:>5}/{total:<5} charged {progress.get('charged', 0):<5}"
        f" ${spent:,.2f} of ${cap:,.2f}"
    )


def follow(client: httpx.Client, instance_id: str, timeout: float) -> dict[str, Any]:
    """Poll the run, redrawing the bar, until it finishes."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/billing/runs/{instance_id}").raise_for_status().json()
        if run.get("progress"):
            print("\r" + bar(run["progress"]), end="", flush=True)
        if run["runtime_status"] in FINISHED:
            print()
            return dict(run)
        if time.monotonic() > deadline:
            print()
            raise SystemExit(f"run {instance_id} still {run['runtime_status']} after {timeout:.0f}s")
        time.sleep(0.25)


def print_warnings(warned: list[dict[str, Any]] | None) -> None:
    for warning in warned or ():
        print(f"  warning       {warning.get('code')}: {warning.get('message')}")


def print_summary(run: dict[str, Any]) -> None:
    out = run.get("output") or {}
    print(f"run {run['instance_id']}: {run['runtime_status']}")
    if not isinstance(out, dict) or "counts" not in out:
        print(json.dumps(out, indent=2))
        return
    counts = {k: v for k, v in out["counts"].items() if v}
    print(f"  customers     {out['total']}")
    print(f"  outcomes      {json.dumps(counts)}")
    if out.get("skipped_by_reason"):
        print(f"  skipped for   {json.dumps(out['skipped_by_reason'])}")
    cards = {}
    for item in out.get("items") or ():
        if item.get("card_source"):
            cards[item["card_source"]] = cards.get(item["card_source"], 0) + 1
    if cards:
        print(f"  cards used    {json.dumps(cards)}")
    print_warnings(out.get("warnings"))
    print(f"  spent         ${out['spent_cents'] / 100:,.2f} of a ${out['cap_cents'] / 100:,.2f} cap")
    print(f"  keys          {json.dumps(out['key_ids'])} (revoked: {out.get('revoked_key_ids')})")
    print(f"  audit         GET /api/billing/runs/{run['instance_id']}/spend")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://localhost:7071")
    parser.add_argument("--plan", default="pro", help="bill customers whose metadata[plan] is this")
    parser.add_argument("--amount-cents", type=int, default=2900)
    parser.add_argument("--budget-usd", type=float, default=500.0)
    parser.add_argument("--max-parallel", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="first create this many customers on the plan")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    settings = local_settings()
    key = settings.get("DEVHOST_FUNCTION_KEY", "")
    if args.seed:
        base = settings.get("STRIPE_API_BASE", "http://127.0.0.1:8420")
        seed_customers(base, settings.get("STRIPE_SECRET_KEY", "sk_test_local"), args.seed, plan=args.plan)
        print(f"seeded {args.seed} customers on plan {args.plan!r} at {base}")
    body = {
        "billing_period": time.strftime("%Y-%m", time.gmtime()),
        "customer_query": {"metadata": {"plan": args.plan}, "amount_cents": args.amount_cents},
        "budget_usd": args.budget_usd,
        "max_parallel": args.max_parallel,
    }
    with httpx.Client(base_url=args.base_url, headers={"x-functions-key": key}, timeout=30) as client:
        try:
            resp = client.post("/api/billing/runs", json=body)
        except httpx.ConnectError:
            print(f"nothing answers at {args.base_url}: start the app with `make run` first", file=sys.stderr)
            return 1
        if resp.status_code != 202:
            print(f"the run was refused ({resp.status_code}): {resp.text}", file=sys.stderr)
            return 1
        instance_id = resp.json()["id"]
        print(
            f"billing run {instance_id}: customers on plan {args.plan!r}, ${args.amount_cents / 100:,.2f} each, "
            f"budget ${args.budget_usd:,.2f}"
        )
        print_warnings(resp.json().get("warnings"))
        run = follow(client, instance_id, args.timeout)
    print_summary(run)
    return 0 if run["runtime_status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
