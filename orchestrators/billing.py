"""The billing run orchestration: one capped vault key per run, charges in bounded batches.

`billing_run` (see docs/billing.md for the step-by-step and why each guarantee holds):

1. `issue_run_key` mints the run's spending key (label `azure-durable/{instanceId}`, cap =
   budget, allowlist = the one charge endpoint). Its result is in history, so replays never
   mint another; the activity itself is idempotent per label for retries after a crash.
2. Customers come from the input, or `fetch_customers` reads them with a second,
   read-only key. The list is an activity result, so item indexes are stable in history.
3. Items go in batches of `max_parallel // 2`; each batch is a `billing_batch` sub-
   orchestration that charges its items in parallel, and two batches run at once (the next
   starts as soon as either finishes: no idle tail), so at most `max_parallel` charges are
   in flight. A batch that fails (an activity ran out of retries) is started again after a
   durable timer, at last recorded as `transient_exhausted`: one bad item never fails the run.
4. After a batch reports cap_exceeded / revoked / expired, no further batch starts (the one
   still in flight finishes; the proxy refuses its charges just the same).
5. `revoke_run_keys` runs at the end whatever happened (the except-then-reraise below).

Orchestrators must be deterministic: only `context` calls and pure functions from
`billing.plan` here; retry options are module constants.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from billing import plan as planning
from billing.payloads import (
    BatchRequest,
    FetchRequest,
    FetchResult,
    ItemOutcome,
    ItemResult,
    KeyIssued,
    RevokeRequest,
    RunRequest,
)

bp = df.Blueprint()

ORCHESTRATOR = "billing_run"
BATCH_ORCHESTRATOR = "billing_batch"
ISSUE_KEY = "issue_run_key"
FETCH_CUSTOMERS = "fetch_customers"
CHARGE_CUSTOMER = "charge_customer"
REVOKE_KEYS = "revoke_run_keys"
STOPPED = "stopped"  # the reason recorded when the run's labels were stopped (POST …/stop)

# Transient faults only reach these (activities return terminal outcomes), so retrying is
# always safe: charges reuse their idempotency key, key issue is idempotent per label.
KEY_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=5)
FETCH_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=5)
CHARGE_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=6)

Task = Any  # what the SDK's context methods return (TaskBase)


def run_billing(context: df.DurableOrchestrationContext) -> Generator[Task, Any, dict[str, Any]]:
    """The `billing_run` orchestrator body; always revokes the run's keys before it ends."""
    plan = planning.RunPlan(context.instance_id, RunRequest.from_dict(context.get_input()))
    failure: Exception | None = None
    output: dict[str, Any] = {}
    try:
        output = yield from _bill(context, plan)
    except Exception as exc:  # re-raised below, after the keys are revoked
        failure = exc
    revoked = yield context.call_activity_with_retry(
        REVOKE_KEYS, KEY_RETRY, RevokeRequest(planning.run_labels(plan.instance_id)).to_dict()
    )
    if failure is not None:
        raise failure
    output["revoked_key_ids"] = revoked
    return output


def _bill(context: df.DurableOrchestrationContext, plan: planning.RunPlan) -> Generator[Task, Any, dict[str, Any]]:
    charge_key = KeyIssued.from_dict(
        (yield context.call_activity_with_retry(ISSUE_KEY, KEY_RETRY, plan.charge_key_request().to_dict()))
    )
    key_ids: dict[str, str | None] = {"charge": charge_key.key_id, "customers": None}
    cap = charge_key.cap_cents
    warned = planning.warnings(plan.run)
    context.set_custom_status(planning.progress(0, [], cap, warned=warned))

    items = plan.run.customers or ()
    fetch_pages = 0
    if plan.needs_fetch and not charge_key.stopped:
        read_key = KeyIssued.from_dict(
            (yield context.call_activity_with_retry(ISSUE_KEY, KEY_RETRY, plan.read_key_request().to_dict()))
        )
        key_ids["customers"] = read_key.key_id
        failure = STOPPED if read_key.stopped else None
        if failure is None:
            fetch = FetchRequest(str(read_key.key_id), plan.run.customer_query, plan.run.customers)
            fetched = FetchResult.from_dict(
                (yield context.call_activity_with_retry(FETCH_CUSTOMERS, FETCH_RETRY, fetch.to_dict()))
            )
            failure = fetched.failure_code
        if failure is not None:
            context.set_custom_status(planning.progress(0, [], cap, failure, warned))
            return planning.summary(plan, [], cap_cents=cap, key_ids=key_ids, stopped=failure, warned=warned)
        items, fetch_pages = fetched.items, fetched.pages
        warned = planning.warnings(plan.run, items)

    stopped: str | None = None
    if charge_key.stopped:
        stopped = STOPPED
    elif not charge_key.key_id:
        stopped = str(ItemOutcome.CAP_EXCEEDED)
    batches = list(plan.batches(items, str(charge_key.key_id)))
    done: dict[int, list[ItemResult]] = {}
    context.set_custom_status(planning.progress(len(items), [], cap, stopped, warned))
    lanes: dict[int, _Lane] = {}
    next_batch = 0
    while True:
        while stopped is None and next_batch < len(batches) and len(lanes) < plan.lanes:
            lanes[next_batch] = _Lane(_charge_batch(context, plan, next_batch, batches[next_batch]))
            next_batch += 1
        if not lanes:
            break
        order = sorted(lanes)
        winner = yield context.task_any([lanes[n].task for n in order])
        batch_no = next(n for n in order if lanes[n].task is winner)
        finished = lanes[batch_no].advance(winner)
        if finished is None:
            continue
        del lanes[batch_no]
        done[batch_no] = finished
        reason = planning.stop_reason(finished)
        if stopped is None and reason is not None:
            stopped = str(reason)
        context.set_custom_status(planning.progress(len(items), _in_order(done), cap, stopped, warned))
    for batch_no in range(next_batch, len(batches)):  # never started: the run stopped
        done[batch_no] = planning.skipped(batches[batch_no], str(stopped))
    results = _in_order(done)
    context.set_custom_status(planning.progress(len(items), results, cap, stopped, warned))
    return planning.summary(
        plan, results, cap_cents=cap, key_ids=key_ids, stopped=stopped, fetch_pages=fetch_pages, warned=warned
    )


def _in_order(done: dict[int, list[ItemResult]]) -> list[ItemResult]:
    return [r for n in sorted(done) for r in done[n]]


class _Lane:
    """One batch in flight: its `_charge_batch` generator and the task it waits on.

    `task_any` hands back the task that finished first; the lane feeds its outcome (value or
    failure) into the generator, which yields its next task (a retry timer, the next
    attempt) or returns the batch's results.
    """

    def __init__(self, steps: Generator[Task, Any, list[ItemResult]]) -> None:
        self.steps = steps
        self.task: Task = next(steps)

    def advance(self, finished: Task) -> list[ItemResult] | None:
        value, error = _outcome(finished)
        try:
            self.task = self.steps.throw(error) if error is not None else self.steps.send(value)
        except StopIteration as stop:
            return list(stop.value)
        return None


def _outcome(task: Task) -> tuple[Any, Exception | None]:
    """A finished task's value or failure (the SDK keeps a failure as the task's result)."""
    try:
        value = task.result
    except Exception as exc:  # test doubles raise it instead
        return None, exc
    return (None, value) if isinstance(value, Exception) else (value, None)


def _charge_batch(
    context: df.DurableOrchestrationContext, plan: planning.RunPlan, batch_no: int, batch: BatchRequest
) -> Generator[Task, Any, list[ItemResult]]:
    """Charge one batch in its own sub-orchestration; never raises for a failed batch."""
    for attempt in range(1, planning.BATCH_ATTEMPTS + 1):
        if attempt > 1:  # let abandoned in-flight requests' leases run out first
            pause = timedelta(seconds=planning.BATCH_RETRY_DELAYS_SECONDS[attempt - 2])
            yield context.create_timer(context.current_utc_datetime + pause)
        try:
            raw = yield context.call_sub_orchestrator(
                BATCH_ORCHESTRATOR, batch.to_dict(), plan.batch_instance_id(batch_no, attempt)
            )
        except Exception:  # an activity ran out of retries: start the batch again (same keys)
            continue
        return [ItemResult.from_dict(r) for r in raw]
    return planning.exhausted(batch)


def charge_batch(context: df.DurableOrchestrationContext) -> Generator[Task, Any, list[dict[str, Any]]]:
    """The `billing_batch` sub-orchestrator body: charge every item of the batch in parallel."""
    batch = BatchRequest.from_dict(context.get_input())
    tasks = [context.call_activity_with_retry(CHARGE_CUSTOMER, CHARGE_RETRY, c.to_dict()) for c in batch.charges()]
    results = yield context.task_all(tasks)
    return list(results)


@bp.orchestration_trigger(context_name="context", orchestration=ORCHESTRATOR)
def billing_run(context: df.DurableOrchestrationContext) -> Generator[Task, Any, dict[str, Any]]:
    return (yield from run_billing(context))


@bp.orchestration_trigger(context_name="context", orchestration=BATCH_ORCHESTRATOR)
def billing_batch(context: df.DurableOrchestrationContext) -> Generator[Task, Any, list[dict[str, Any]]]:
    return (yield from charge_batch(context))
