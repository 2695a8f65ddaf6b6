"""Helpers for the billing end-to-end tests: start and follow runs, count what Stripe holds."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx

from devhost.seed import MODERN, create_customer, iter_objects


def unique_plan(name: str) -> str:
    """A metadata value no other test's customers carry (the shared localstripe keeps them all)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def seed(
    localstripe_url: str, secret: str, n: int, plan: str, *, declining: int = 0, shape: str = MODERN
) -> list[str]:
    """`n` good customers (then `declining` whose card is refused at charge time) on `plan`."""
    from devhost.seed import DECLINING_CARD, GOOD_CARD

    with httpx.Client(base_url=localstripe_url, auth=(secret, ""), timeout=30) as client:
        return [
            create_customer(
                client, name=f"{plan} {i}", plan=plan, card=DECLINING_CARD if i >= n else GOOD_CARD, shape=shape
            )
            for i in range(n + declining)
        ]


def start_run(base: str, headers: dict[str, str], body: dict[str, Any]) -> str:
    resp = httpx.post(f"{base}/api/billing/runs", json=body, headers=headers, timeout=30)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def get_run(base: str, headers: dict[str, str], instance_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/api/billing/runs/{instance_id}", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


FINISHED = ("Completed", "Failed", "Terminated")


def wait_until(
    base: str, headers: dict[str, str], instance_id: str, done_at_least: int | None = None, timeout: float = 120
) -> dict[str, Any]:
    """Poll the run until it finishes (or its progress reaches `done_at_least`)."""
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(base, headers, instance_id)
        if run["runtime_status"] in FINISHED:
            return run
        if done_at_least is not None and (run.get("progress") or {}).get("done", 0) >= done_at_least:
            return run
        assert time.monotonic() < deadline, f"run {instance_id} still {run['runtime_status']}: {run.get('progress')}"
        time.sleep(0.2)


def succeeded_objects(
    localstripe_url: str, secret: str, instance_id: str, resource: str = "payment_intents"
) -> Counter[int]:
    """How many succeeded Stripe objects each item of the run has (any value > 1 is a duplicate)."""
    per_item: Counter[int] = Counter()
    for obj in iter_objects(localstripe_url, secret, resource):
        metadata = obj.get("metadata") or {}
        ok = obj.get("status") == "succeeded" if resource == "payment_intents" else obj.get("paid")
        if metadata.get("orchestration_id") == instance_id and ok:
            per_item[int(metadata["item_index"])] += 1
    return per_item
