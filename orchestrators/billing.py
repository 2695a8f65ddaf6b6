"""The billing run orchestration: one capped vault key per run, charges in bounded batches.

`billing_run` (see docs/billing.md for the step-by-step and why each guarantee holds):

1. `issue_run_key` mints the run's spending key (label `azure-durable/{instanceId}`, cap =
   budget, allowlist = the one charge endpoint). Its result is in history, so replays never
   mint another; the activity itself is idempotent per label for retries after a crash.
2. Customers come from the input, or `fetch_customers` reads them with a second,
   read-only key. The list is an activity result, so item indexes are stable in history.
3. Items go in batches of `max_parallel // 2`; batch n belongs to lane n % 2. Each lane is a
   `billing_lane` sub-orchestration that runs its batches one after another, each batch a
   `billing_batch` sub-orchestration charging its items in parallel; the run waits on both
   lanes with one `task_all`, so at most `max_parallel` charges are in flight and one lane
   charges while the other waits for its batch's slowest charge. (A `task_any` refill loop in
   the run stalls on Azure: the extension awaits a WhenAny of the newest batch only.) A batch
   that fails (an activity ran out of retries) is started again after a durable timer, at
   last recorded as `transient_exhausted`: one bad item never fails the run.
4. After a batch reports cap_exceeded / revoked / expired, its lane starts no further batch;
   the other lane stops after its own batch that meets the same refusal from the proxy.
   A run stopped by its cap with room left for a refused item (another item's hold was
   pending when it was refused, then released) charges those items again, one at a time, in
   a recheck lane (`billing.plan.cap_recheck`).
5. `revoke_run_keys` runs at the end whatever happened (the except-then-reraise below).

Before step 1, a run that needs a person's approval (`approval_expires_at` in its input, set by
the start route) waits for the `approval` external event or a durable timer at that instant,
whichever comes first, and cancels the timer after the event (docs/approvals.md). No key
exists while it waits. When the timer wins, `close_run_approval` writes the timeout as the
run's one decision, unless an approve or reject was written first (then that decision counts).

Orchestrators must be deterministic: only `context` calls and pure functions from
`billing.plan` here; retry options are module constants.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from billing import plan as planning
from billing.payloads import (
    ApprovalClose,
    ApprovalDecision,
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
LANE_ORCHESTRATOR = "billing_lane"
BATCH_ORCHESTRATOR = "billing_batch"
ISSUE_KEY = "issue_run_key"
FETCH_CUSTOMERS = "fetch_customers"
CHARGE_CUSTOMER = "charge_customer"
REVOKE_KEYS = "revoke_run_keys"
CLOSE_APPROVAL = "close_run_approval"
APPROVAL_EVENT = "approval"
APPROVED = "approved"
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
    revoke = RevokeRequest(planning.run_labels(plan.instance_id), plan.instance_id, output.get("stopped"))
    revoked = yield context.call_activity_with_retry(REVOKE_KEYS, KEY_RETRY, revoke.to_dict())
    if failure is not None:
        raise failure
    output["revoked_key_ids"] = revoked
    return output


def _await_approval(
    context: df.DurableOrchestrationContext, plan: planning.RunPlan
) -> Generator[Task, Any, ApprovalDecision]:
    """Wait for the `approval` event or the window's end; the decision that counts (module doc).

    The timer is cancelled once the event wins, as the extension's own samples do
    (`WaitForExternalEvent` + `CreateTimer` + `Task.WhenAny`, then `cts.Cancel()`)."""
    expires_at = str(plan.run.approval_expires_at)
    context.set_custom_status({
        "status": "awaiting_approval", "approval": {"expires_at": expires_at},
        **planning.progress(len(plan.run.customers or ()), [], 0, warned=planning.warnings(plan.run)),
    })
    event = context.wait_for_external_event(APPROVAL_EVENT)
    timer = context.create_timer(datetime.fromisoformat(expires_at.replace("Z", "+00:00")))
    winner = yield context.task_any([event, timer])
    if winner == event:
        timer.cancel()
        return ApprovalDecision.from_dict(_event_value(event.result))
    decided = yield context.call_activity_with_retry(
        CLOSE_APPROVAL, KEY_RETRY, ApprovalClose(plan.instance_id, expires_at).to_dict()
    )
    return ApprovalDecision.from_dict(decided)


def _event_value(value: Any) -> dict[str, Any]:
    """The event's payload: the SDK hands it over decoded, or as JSON text when raised as a string."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {"decision": "rejected", "reason": "unreadable decision"}


def _not_approved(plan: planning.RunPlan, decision: ApprovalDecision) -> dict[str, Any]:
    """The summary of a run that never got its approval: nothing charged, no key ever issued."""
    stopped = {"rejected": "rejected", "stopped": STOPPED}.get(decision.decision, "approval_timeout")
    items = plan.run.customers or ()
    results = [planning.skipped(b, stopped) for b in plan.batches(items, "")]
    flat = [r for batch in results for r in batch]
    out = planning.summary(plan, flat, cap_cents=0, key_ids={"charge": None, "customers": None}, stopped=stopped,
                           warned=planning.warnings(plan.run))
    out["approval"] = decision.to_dict()
    return out


def _bill(context: df.DurableOrchestrationContext, plan: planning.RunPlan) -> Generator[Task, Any, dict[str, Any]]:
    approval: ApprovalDecision | None = None
    if plan.run.approval_expires_at:
        approval = yield from _await_approval(context, plan)
        if approval.decision != APPROVED:
            out = _not_approved(plan, approval)
            context.set_custom_status(planning.progress(out["total"], [], 0, out["stopped"], out.get("warnings") or ()))
            return out
    output = yield from _charge(context, plan)
    if approval is not None:
        output["approval"] = approval.to_dict()
    return output


def _charge(context: df.DurableOrchestrationContext, plan: planning.RunPlan) -> Generator[Task, Any, dict[str, Any]]:
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
    lanes = plan.lane_requests(batches, cap) if stopped is None else []
    lane_ids = [plan.lane_instance_id(lane.lane) for lane in lanes]
    context.set_custom_status(dict(planning.progress(len(items), [], cap, stopped, warned), lanes=lane_ids))
    outputs: list[dict[str, Any]] = []
    if lanes:
        outputs = yield context.task_all(
            [
                context.call_sub_orchestrator(LANE_ORCHESTRATOR, lane.to_dict(), iid)
                for lane, iid in zip(lanes, lane_ids, strict=True)
            ]
        )
    results, lane_stop = planning.merge_lanes(outputs)
    stopped = stopped or lane_stop
    recheck = planning.cap_recheck(results, cap, stopped)
    if recheck:  # refused while another item's hold was pending, and there is room now
        lane = plan.recheck_lane(batches, recheck, cap)
        lane_id = plan.lane_instance_id(lane.lane)
        rechecking = set(recheck)
        kept = [r for r in results if r.item_index not in rechecking]
        status = planning.progress(len(items), kept, cap, None, warned)
        context.set_custom_status(dict(status, lanes=[lane_id], settled_lanes=lane_ids))
        rechecked, stopped = planning.merge_lanes(
            [(yield context.call_sub_orchestrator(LANE_ORCHESTRATOR, lane.to_dict(), lane_id))]
        )
        results = sorted([*kept, *rechecked], key=lambda r: r.item_index)
    if not lanes:  # never started: the key could not spend at all
        results = [r for b in batches for r in planning.skipped(b, str(stopped))]
    context.set_custom_status(planning.progress(len(items), results, cap, stopped, warned))
    return planning.summary(
        plan, results, cap_cents=cap, key_ids=key_ids, stopped=stopped, fetch_pages=fetch_pages, warned=warned
    )


def run_lane(context: df.DurableOrchestrationContext) -> Generator[Task, Any, dict[str, Any]]:
    """The `billing_lane` sub-orchestrator body: its batches one after another.

    After a batch reports cap_exceeded / revoked / expired, the lane starts no further batch and
    records the rest as skipped. Its progress is its custom status, updated after each batch.
    """
    lane = planning.LaneRequest.from_dict(context.get_input())
    results: list[ItemResult] = []
    stopped: str | None = None
    stopped_at: int | None = None
    for batch_no, batch in lane.batches:
        if stopped is not None:
            results.extend(planning.skipped(batch, stopped))
            continue
        finished = yield from _charge_batch(context, lane.run_id, batch_no, batch)
        results.extend(finished)
        reason = planning.stop_reason(finished)
        if reason is not None:
            stopped, stopped_at = str(reason), batch_no
        context.set_custom_status(planning.progress(lane.total, results, lane.cap_cents, stopped))
    return planning.lane_output(results, stopped, stopped_at)


def _charge_batch(
    context: df.DurableOrchestrationContext, run_id: str, batch_no: int, batch: BatchRequest
) -> Generator[Task, Any, list[ItemResult]]:
    """Charge one batch in its own sub-orchestration; never raises for a failed batch."""
    for attempt in range(1, planning.BATCH_ATTEMPTS + 1):
        if attempt > 1:  # let abandoned in-flight requests' leases run out first
            pause = timedelta(seconds=planning.BATCH_RETRY_DELAYS_SECONDS[attempt - 2])
            yield context.create_timer(context.current_utc_datetime + pause)
        try:
            raw = yield context.call_sub_orchestrator(
                BATCH_ORCHESTRATOR, batch.to_dict(), planning.batch_instance_id(run_id, batch_no, attempt)
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


@bp.orchestration_trigger(context_name="context", orchestration=LANE_ORCHESTRATOR)
def billing_lane(context: df.DurableOrchestrationContext) -> Generator[Task, Any, dict[str, Any]]:
    return (yield from run_lane(context))


@bp.orchestration_trigger(context_name="context", orchestration=BATCH_ORCHESTRATOR)
def billing_batch(context: df.DurableOrchestrationContext) -> Generator[Task, Any, list[dict[str, Any]]]:
    return (yield from charge_batch(context))
