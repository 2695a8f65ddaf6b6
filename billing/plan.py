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
# Batches in flight at once. With one, every batch waits for its slowest charge before the
# next starts and the fan-out idles at each batch's tail; with two half-size batches the
# next one starts as soon as either finishes, and at most `max_parallel` charges are still
# in flight (docs/billing.md).
LANES = 2


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
        return f"{self.instance_id}:batch-{batch_no}:{attempt}"


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
