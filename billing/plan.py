"""Deterministic decisions of a billing run: key policies, batches, progress and summary.

Everything here is a pure function of the run's input, its instance id and activity
results already in history, so the orchestrator can call it on every replay and get the
same answer (no clock, no I/O, no randomness).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from billing.payloads import (
    STOPPING_OUTCOMES,
    BatchRequest,
    ChargeItem,
    Endpoint,
    ItemOutcome,
    ItemResult,
    KeyRequest,
    RunRequest,
)

LABEL_PREFIX = "azure-durable/"
# The read-only key can list customers, read one and list a customer's cards (the fourth
# step of `billing.cards`); it cannot move money.
CUSTOMER_READ_ENDPOINTS: tuple[str, ...] = ("GET /v1/customers", "GET /v1/customers/*", "GET /v1/payment_methods")
# Customer ids listed per warning (the count is always complete).
WARNING_SAMPLE = 20
# The read key's cap: it never spends (GET only), but the vault wants a positive cap.
READ_KEY_CAP_CENTS = 100
# Larger runs keep only the items that were not charged in the output (history size).
MAX_ITEMS_IN_OUTPUT = 1000
# Durable-timer pauses before a failed batch sub-orchestration (an activity ran out of
# retries) is started again: safe, since every charge reuses its idempotency key. The
# pauses must outlast the proxy's in-flight lease (2 x SPENDGATE_STRIPE_TIMEOUT_SECONDS
# + 10 s = 70 s by default): a request abandoned by a crashed host answers 409
# idempotency_key_in_use until the lease ends, then a retry takes it over.
BATCH_RETRY_DELAYS_SECONDS: tuple[int, ...] = (30, 60, 120)
BATCH_ATTEMPTS = len(BATCH_RETRY_DELAYS_SECONDS) + 1
# Lanes: sub-orchestrations that each run their share of the batches one after another, all
# under one `task_all`. With one batch at a time the fan-out idles at each batch's tail; with
# two lanes of half-size batches the other lane keeps charging meanwhile, and at most
# `max_parallel` charges are in flight. Lanes, not a `task_any` refill loop in the run: the
# Durable extension awaits the run's actions one at a time, and a `task_any` over a batch
# started earlier reaches it as a WhenAny of the new batch only, which stalls the loop
# (devhost/durable/shim.py, docs/billing.md).
LANES = 2
# The lane number of the run's recheck (`RunPlan.recheck_lane`), after the charging lanes.
RECHECK_LANE = LANES


def charge_label(instance_id: str) -> str:
    """The label of a run's spending key (`GET /api/spend?label=` reports it)."""
    return f"{LABEL_PREFIX}{instance_id}"


def read_label(instance_id: str) -> str:
    """The label of a run's read-only customer key."""
    return f"{LABEL_PREFIX}{instance_id}/customers"


def run_labels(instance_id: str) -> tuple[str, str]:
    return charge_label(instance_id), read_label(instance_id)


@dataclass(frozen=True)
class RunPlan:
    """A run's input together with its instance id: what the orchestrator decides from."""

    instance_id: str
    run: RunRequest

    def charge_key_request(self) -> KeyRequest:
        return KeyRequest(
            label=charge_label(self.instance_id),
            role="charge",
            cap_cents=self.run.budget_cents,
            allowed_endpoints=self.charge_endpoints,
            expires_in=self.run.expires_in,
            metadata={"orchestration_id": self.instance_id, "billing_period": self.run.billing_period},
        )

    @property
    def charge_endpoints(self) -> tuple[str, ...]:
        """The charge key's allowlist: the charge, and for payment intents the cancel of one the
        customer did not complete (`billing.charging`: only a canceled intent is released)."""
        if self.run.endpoint is Endpoint.PAYMENT_INTENTS:
            return ("POST /v1/payment_intents", "POST /v1/payment_intents/*/cancel")
        return (f"POST /v1/{self.run.endpoint}",)

    def read_key_request(self) -> KeyRequest:
        return KeyRequest(
            label=read_label(self.instance_id),
            role="customers",
            cap_cents=READ_KEY_CAP_CENTS,
            allowed_endpoints=CUSTOMER_READ_ENDPOINTS,
            expires_in=self.run.expires_in,
            metadata={"orchestration_id": self.instance_id},
        )

    @property
    def needs_fetch(self) -> bool:
        """Must customers (or their cards) be read from Stripe before charging?"""
        if self.run.customers is None:
            return True
        return self.run.endpoint is Endpoint.PAYMENT_INTENTS and any(
            c.payment_method is None for c in self.run.customers
        )

    @property
    def lanes(self) -> int:
        """How many batches run at once."""
        return min(LANES, self.run.max_parallel)

    @property
    def batch_size(self) -> int:
        """Items per batch: `lanes` batches together never exceed `max_parallel` charges."""
        return self.run.max_parallel // self.lanes

    def batches(self, items: Sequence[ChargeItem], key_id: str) -> Iterator[BatchRequest]:
        """Consecutive batches of `batch_size` items, each knowing its first index."""
        size = self.batch_size
        if self.run.purpose:  # the run's purpose for every item that names none (the charge identity)
            items = [i if i.purpose else replace(i, purpose=self.run.purpose) for i in items]
        # A card the caller named is charged as named (also when no customer had to be read).
        items = [replace(i, card_source="explicit") if i.payment_method and not i.card_source else i for i in items]
        for start in range(0, len(items), size):
            yield BatchRequest(
                orchestration_id=self.instance_id,
                key_id=key_id,
                endpoint=self.run.endpoint,
                billing_period=self.run.billing_period,
                first_index=start,
                items=tuple(items[start : start + size]),
            )

    def batch_instance_id(self, batch_no: int, attempt: int) -> str:
        """Deterministic id of a batch sub-orchestration (attempts get fresh ids)."""
        return batch_instance_id(self.instance_id, batch_no, attempt)

    def lane_requests(self, batches: Sequence[BatchRequest], cap_cents: int) -> list[LaneRequest]:
        """Batch n goes to lane n % lanes, so the lanes charge the items roughly in order."""
        count = min(self.lanes, len(batches))
        return [
            LaneRequest(self.instance_id, lane, tuple((n, b) for n, b in enumerate(batches) if n % count == lane), cap_cents)
            for lane in range(count)
        ]

    def lane_instance_id(self, lane: int) -> str:
        return f"{self.instance_id}:lane-{lane}"

    def recheck_lane(self, batches: Sequence[BatchRequest], indexes: Sequence[int], cap_cents: int) -> LaneRequest:
        """The items of `cap_recheck`, one batch each (charged one at a time), numbered after `batches`."""
        wanted = set(indexes)
        singles = [
            replace(b, first_index=b.first_index + n, items=(item,))
            for b in batches
            for n, item in enumerate(b.items)
            if b.first_index + n in wanted
        ]
        numbered = tuple((len(batches) + k, single) for k, single in enumerate(singles))
        return LaneRequest(self.instance_id, RECHECK_LANE, numbered, cap_cents)


def batch_instance_id(run_id: str, batch_no: int, attempt: int) -> str:
    """Deterministic id of a batch sub-orchestration (attempts get fresh ids)."""
    return f"{run_id}:batch-{batch_no}:{attempt}"


@dataclass(frozen=True)
class LaneRequest:
    """Input of the `billing_lane` sub-orchestration: its batches, by batch number, in order."""

    run_id: str
    lane: int
    batches: tuple[tuple[int, BatchRequest], ...]
    cap_cents: int

    @property
    def total(self) -> int:
        return sum(len(b.items) for _, b in self.batches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "lane": self.lane,
            "cap_cents": self.cap_cents,
            "batches": [{"batch_no": n, "batch": b.to_dict()} for n, b in self.batches],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaneRequest:
        return cls(
            run_id=str(data["run_id"]),
            lane=int(data["lane"]),
            batches=tuple((int(b["batch_no"]), BatchRequest.from_dict(b["batch"])) for b in data["batches"]),
            cap_cents=int(data["cap_cents"]),
        )


def lane_output(results: Sequence[ItemResult], stopped: str | None, stopped_at: int | None) -> dict[str, Any]:
    """What a lane hands back to the run: every item's result, and where and why it stopped."""
    return {"results": [r.to_dict() for r in results], "stopped": stopped, "stopped_at": stopped_at}


def merge_lanes(outputs: Sequence[dict[str, Any]]) -> tuple[list[ItemResult], str | None]:
    """All items in index order; the run's stop reason is the one of the earliest batch that stopped."""
    results = sorted((ItemResult.from_dict(r) for out in outputs for r in out["results"]), key=lambda r: r.item_index)
    stops = sorted((int(o["stopped_at"]), str(o["stopped"])) for o in outputs if o.get("stopped") is not None)
    return results, (stops[0][1] if stops else None)


def merge_progress(run_status: Any, lane_statuses: Sequence[Any]) -> Any:
    """The run's progress while its lanes charge: the run's own status plus every lane's counts.

    The run orchestrator waits on its lanes and cannot update its own status meanwhile, so it
    names them (`lanes`); each lane reports its own progress after every batch.
    """
    if not isinstance(run_status, dict) or "lanes" not in run_status:
        return run_status
    merged = {k: v for k, v in run_status.items() if k not in ("lanes", "settled_lanes")}
    counts: Counter[str] = Counter(merged.get("counts") or {})
    skipped: Counter[str] = Counter(merged.get("skipped_by_reason") or {})
    for lane in lane_statuses:
        if not isinstance(lane, dict):
            continue
        for name in ("done", "charged", "spent_cents"):
            merged[name] = int(merged.get(name) or 0) + int(lane.get(name) or 0)
        counts.update(lane.get("counts") or {})
        skipped.update(lane.get("skipped_by_reason") or {})
        merged["stopped"] = merged.get("stopped") or lane.get("stopped")
    merged["counts"], merged["skipped_by_reason"] = dict(counts), dict(skipped)
    return merged


def cap_recheck(results: Sequence[ItemResult], cap_cents: int, stopped: str | None) -> list[int]:
    """Indexes of items refused for the cap (or skipped after such a refusal) worth one more try.

    Charges in flight together reserve together: an item can be refused while another item's
    reservation is still pending and is then released (a decline, an unpaid 3-D Secure intent
    the run cancels). Once the lanes are done nothing of this run is in flight, so if the
    charged total leaves room for the smallest refused item, those items are charged again
    one at a time (same idempotency keys: a refusal stores no answer at the proxy). A refusal
    then is the cap's own. Empty when the run did not stop for its cap or nothing could fit.
    """
    if stopped != str(ItemOutcome.CAP_EXCEEDED):
        return []
    cap_reason = str(ItemOutcome.CAP_EXCEEDED)
    refused = [
        r for r in results
        if r.outcome is ItemOutcome.CAP_EXCEEDED or (r.outcome is ItemOutcome.SKIPPED and r.reason == cap_reason)
    ]
    if not refused or spent_cents(results) + min(r.amount_cents for r in refused) > cap_cents:
        return []
    return sorted(r.item_index for r in refused)


def stop_reason(results: Sequence[ItemResult]) -> ItemOutcome | None:
    """The first outcome in a batch that means the key cannot charge any more, if any."""
    for result in results:
        if result.outcome in STOPPING_OUTCOMES:
            return result.outcome
    return None


def skipped(batch: BatchRequest, reason: ItemOutcome | str) -> list[ItemResult]:
    """Results for a batch that is never started because the run stopped."""
    return [
        ItemResult(c.item_index, c.item.customer_id, c.item.amount_cents, ItemOutcome.SKIPPED, reason=str(reason))
        for c in batch.charges()
    ]


def exhausted(batch: BatchRequest) -> list[ItemResult]:
    """Results for a batch whose sub-orchestration failed every attempt (charges unconfirmed)."""
    return [
        ItemResult(
            c.item_index,
            c.item.customer_id,
            c.item.amount_cents,
            ItemOutcome.TRANSIENT_EXHAUSTED,
            reason="still failing after all retries; the proxy's audit log is the record",
        )
        for c in batch.charges()
    ]


def spent_cents(results: Sequence[ItemResult]) -> int:
    return sum(r.amount_cents for r in results if r.outcome is ItemOutcome.CHARGED)


def warnings(run: RunRequest, items: Sequence[ChargeItem] | None = None) -> list[dict[str, Any]]:
    """What is odd about a run before it charges anyone.

    `items` is the list to bill once known (None at `POST`, before customers are read):
    a query that matched nobody, a budget below the smallest charge (nobody can be billed),
    and customers whose own currency is not usd (they are charged in USD all the same).
    """
    out: list[dict[str, Any]] = []
    if items is not None and not items and run.customer_query is not None:
        out.append({"code": "no_customers", "message": f"the customer_query {run.customer_query.to_dict()['metadata']} "
                    "matched no customer: nobody will be billed"})
    if items is not None:
        amounts = [i.amount_cents for i in items]
    elif run.customers is not None:
        amounts = [c.amount_cents for c in run.customers]
    else:
        amounts = [run.customer_query.amount_cents] if run.customer_query is not None else []
    if amounts and run.budget_cents < min(amounts):
        out.append({"code": "budget_below_smallest_charge", "budget_cents": run.budget_cents,
                    "smallest_charge_cents": min(amounts),
                    "message": "budget_usd is below the smallest charge: every charge will be refused (cap_exceeded)"})
    foreign = [i for i in items or () if i.currency and i.currency.lower() != "usd"]
    if foreign:
        out.append({"code": "non_usd_customers", "count": len(foreign),
                    "currencies": dict(Counter(str(i.currency).lower() for i in foreign)),
                    "customer_ids": [i.customer_id for i in foreign[:WARNING_SAMPLE]],
                    "message": f"{len(foreign)} customer(s) have a currency other than usd in Stripe; "
                    "the run charges them in USD"})
    return out


def progress(
    total: int,
    results: Sequence[ItemResult],
    cap_cents: int,
    stopped: str | None = None,
    warned: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The custom status after each batch (no vault key, ever): small, whatever the run's size."""
    counts = Counter(str(r.outcome) for r in results)
    return {
        "done": len(results),
        "total": total,
        "charged": counts.get(str(ItemOutcome.CHARGED), 0),
        "counts": dict(counts),
        "skipped_by_reason": dict(Counter(r.reason or "" for r in results if r.outcome is ItemOutcome.SKIPPED)),
        "spent_cents": spent_cents(results),
        "cap_cents": cap_cents,
        "stopped": stopped,
        "warnings": list(warned),
    }


def summary(
    plan: RunPlan,
    results: Sequence[ItemResult],
    *,
    cap_cents: int,
    key_ids: dict[str, str | None],
    stopped: str | None,
    fetch_pages: int = 0,
    warned: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The run's output: counts per outcome, spend, key ids and the per-item results."""
    counts = Counter(str(r.outcome) for r in results)
    skipped_by_reason = Counter(r.reason or "" for r in results if r.outcome is ItemOutcome.SKIPPED)
    out: dict[str, Any] = {
        "instance_id": plan.instance_id,
        "billing_period": plan.run.billing_period,
        "endpoint": str(plan.run.endpoint),
        "total": len(results),
        "counts": {str(o): counts.get(str(o), 0) for o in ItemOutcome},
        "skipped_by_reason": dict(skipped_by_reason),
        "spent_cents": spent_cents(results),
        "cap_cents": cap_cents,
        "stopped": stopped,
        "key_ids": key_ids,
        "label": charge_label(plan.instance_id),
        "customer_pages": fetch_pages,
        "warnings": list(warned),
    }
    if len(results) <= MAX_ITEMS_IN_OUTPUT:
        out["items"] = [r.to_dict() for r in results]
    else:
        # Keep history small: list only what was not charged; the audit log has the rest.
        out["items"] = [r.to_dict() for r in results if r.outcome is not ItemOutcome.CHARGED]
        out["items_omitted"] = "charged items; see GET /api/billing/runs/{id}/spend and the key's audit log"
    return out
