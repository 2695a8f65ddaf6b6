"""Turning the SDK's orchestrator state into history, as the Durable extension does.

The SDK returns the *cumulative* actions of the orchestration (replay schema 2: one list
of top-level actions, WhenAll = 12 / WhenAny = 11 holding `compoundActions`). Top-level
actions only ever get appended, so the engine keeps `ActionsSeen` and schedules only the
new tail. Sequence numbers are handed out the way the SDK hands them out
(`DurableOrchestrationContext._add_to_open_tasks`): one per atomic activity / timer /
sub-orchestration action in depth-first order; external-event waits take none.

Retries are host-side, as DTFx's RetryInterceptor does them: an attempt that fails gets
a retry timer (`TimerCreated`/`TimerFired`, a new sequence number), and when it fires,
the next attempt is scheduled under another new sequence number, until the attempts
are used up; after the last failed attempt there is one more timer, which the SDK's
`RetryAbleTask` waits for before it fails the task. Because the SDK numbers those
timers and re-attempts when it *processes* the failure / fire event, an episode may carry
at most one such "allocating" event, and it must be the episode's last new event; then
the ids of actions the user code yields in that episode come first, the retry's after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devhost.durable import history as h
from devhost.durable.history import EventType
from devhost.durable.store import HistoryRow, InboxItem

ACTIVITY, ACTIVITY_RETRY, SUB, SUB_RETRY, CONTINUE_AS_NEW, TIMER, EXTERNAL_EVENT = 0, 1, 2, 3, 4, 5, 6
WHEN_ANY, WHEN_ALL = 11, 12


class UnsupportedAction(Exception):
    """The orchestrator used an API devhost does not run (entities, durable HTTP)."""


@dataclass
class Work:
    """Something to start once the episode is committed."""

    kind: str  # "activity" | "timer" | "sub"
    event_id: int
    name: str = ""
    input: str | None = None
    fire_at: str | None = None
    instance_id: str | None = None


@dataclass
class Plan:
    rows: list[HistoryRow]
    work: list[Work]
    next_seq: int
    continue_as_new: bool = False
    continue_input: str | None = None


def atomic_actions(action: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Depth-first atomic actions of one (possibly compound) action."""
    if action.get("actionType") in (WHEN_ANY, WHEN_ALL):
        for child in action.get("compoundActions") or []:
            yield from atomic_actions(child)
    else:
        yield action


def sub_instance_id(parent_id: str, event_id: int) -> str:
    """The id of a sub-orchestration started without one: `<parent>:<sequence number>`."""
    return f"{parent_id}:{event_id}"


def _schedule(
    kind: str, seq: int, name: str, input_text: str | None, instance_id: str | None, now: datetime, meta: dict[str, Any]
) -> tuple[HistoryRow, Work]:
    if kind == "activity":
        return HistoryRow(h.task_scheduled(seq, name, input_text, now), meta, None), Work(
            "activity", seq, name, input_text
        )
    assert instance_id is not None
    ev = h.sub_orchestration_created(seq, name, instance_id, input_text, now)
    return HistoryRow(ev, meta, None), Work("sub", seq, name, input_text, instance_id=instance_id)


def plan_new_actions(
    state: dict[str, Any], seen: int, next_seq: int, instance_id: str, now: datetime
) -> tuple[Plan, int]:
    """History rows and work for the top-level actions past `seen`; returns the plan and the new `seen`."""
    top = state.get("actions") or [[]]
    top_level: list[dict[str, Any]] = top[0] if top else []
    plan = Plan([], [], next_seq)
    for action in top_level[seen:]:
        for a in atomic_actions(action):
            t = a.get("actionType")
            if t == EXTERNAL_EVENT:
                continue
            if t == CONTINUE_AS_NEW:
                plan.continue_as_new, plan.continue_input = True, a.get("input")
                plan.next_seq += 1
                continue
            if t not in (ACTIVITY, ACTIVITY_RETRY, SUB, SUB_RETRY, TIMER):
                raise UnsupportedAction(f"devhost does not run durable action type {t}")
            seq = plan.next_seq
            plan.next_seq += 1
            if t == TIMER:
                fire_at = h.parse_iso(a["fireAt"])
                plan.rows.append(HistoryRow(h.timer_created(seq, fire_at, now), {}, None))
                plan.work.append(Work("timer", seq, fire_at=h.iso(fire_at)))
                continue
            kind = "activity" if t in (ACTIVITY, ACTIVITY_RETRY) else "sub"
            meta: dict[str, Any] = {}
            if t in (ACTIVITY_RETRY, SUB_RETRY):
                opts = a.get("retryOptions") or {}
                meta["retry"] = {
                    "kind": kind,
                    "name": a["functionName"],
                    "input": a.get("input"),
                    "attempt": 1,
                    "max": int(opts.get("maxNumberOfAttempts", 1)),
                    "first_ms": int(opts.get("firstRetryIntervalInMilliseconds", 1000)),
                    "instance_id": a.get("instanceId"),
                    "root": seq,  # the first attempt's number: links the chain to its action (shim.py)
                }
            child_id = (a.get("instanceId") or sub_instance_id(instance_id, seq)) if kind == "sub" else None
            row, work = _schedule(kind, seq, a["functionName"], a.get("input"), child_id, now, meta)
            plan.rows.append(row)
            plan.work.append(work)
    return plan, len(top_level)


def scheduling_rows(rows: list[HistoryRow]) -> dict[tuple[bool, int], HistoryRow]:
    """Rows that scheduled something, keyed by (is_timer, sequence number)."""
    out: dict[tuple[bool, int], HistoryRow] = {}
    for r in rows:
        t = r.event["EventType"]
        if t in (EventType.TASK_SCHEDULED, EventType.SUB_ORCHESTRATION_INSTANCE_CREATED):
            out[(False, r.event["EventId"])] = r
        elif t == EventType.TIMER_CREATED:
            out[(True, r.event["EventId"])] = r
    return out


def completion_target(event: dict[str, Any]) -> tuple[bool, int] | None:
    key = h.COMPLETION_KEYS.get(event["EventType"])
    if key is None:
        return None
    return (event["EventType"] == EventType.TIMER_FIRED, int(event[key]))


def allocates(event: dict[str, Any], scheduled: dict[tuple[bool, int], HistoryRow]) -> bool:
    """Does the SDK hand out a new sequence number when it processes this event (a retry step)?"""
    target = completion_target(event)
    if target is None or target not in scheduled:
        return False
    retry = scheduled[target].meta.get("retry")
    if retry is None:
        return False
    if target[0]:  # a retry timer fired: re-attempt unless attempts are used up
        return int(retry["attempt"]) < int(retry["max"])
    return event["EventType"] in h.FAILURES


def plan_retry_step(
    event: dict[str, Any], scheduled: dict[tuple[bool, int], HistoryRow], next_seq: int, instance_id: str, now: datetime
) -> Plan:
    """The retry timer after a failed attempt, or the next attempt after a retry timer fired."""
    plan = Plan([], [], next_seq)
    if not allocates(event, scheduled):
        return plan
    target = completion_target(event)
    assert target is not None
    retry = dict(scheduled[target].meta["retry"])
    seq = plan.next_seq
    plan.next_seq += 1
    if not target[0]:  # failed attempt -> retry timer (DTFx: first interval * backoff 1 ** attempt)
        fire_at = now + timedelta(milliseconds=retry["first_ms"])
        plan.rows.append(HistoryRow(h.timer_created(seq, fire_at, now), {"retry": retry}, None))
        plan.work.append(Work("timer", seq, fire_at=h.iso(fire_at)))
        return plan
    retry["attempt"] = int(retry["attempt"]) + 1
    child_id = None
    if retry["kind"] == "sub":
        child_id = retry.get("instance_id") or sub_instance_id(instance_id, seq)
    row, work = _schedule(retry["kind"], seq, retry["name"], retry["input"], child_id, now, {"retry": retry})
    plan.rows.append(row)
    plan.work.append(work)
    return plan


@dataclass
class Selection:
    """The inbox events one episode takes, and what it throws away."""

    batch: list[InboxItem]
    drop: list[str]  # keys of stale rows: already in history, earlier generation, duplicate result
    terminate: InboxItem | None
    more: bool  # events left for the next episode
    scheduled: dict[tuple[bool, int], HistoryRow]


def select_new_events(inbox: list[InboxItem], rows: list[HistoryRow], generation: int) -> Selection:
    """Pick the next episode's events in arrival order.

    A terminate request ends the batch (and the orchestration); a retry step ("allocating"
    event, see the module docstring) ends the batch so sequence numbers match the SDK's.
    """
    consumed = {r.inbox_key for r in rows if r.inbox_key}
    scheduled = scheduling_rows(rows)
    done = {t for r in rows if (t := completion_target(r.event)) is not None}
    drop: list[str] = []
    batch: list[InboxItem] = []
    terminate = None
    for item in inbox:
        target = completion_target(item.event)
        stale = item.key in consumed or item.generation not in (-1, generation)
        if not stale and target is not None:
            stale = target in done or target not in scheduled  # duplicate result (an activity re-run)
        if stale:
            drop.append(item.key)
            continue
        if item.event["EventType"] == EventType.EXECUTION_TERMINATED:
            terminate, batch = item, [item]
            break
        if target is not None:
            done.add(target)
        batch.append(item)
        if allocates(item.event, scheduled):
            break
    return Selection(batch, drop, terminate, len(inbox) - len(drop) > len(batch), scheduled)
