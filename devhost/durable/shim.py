"""Which of the SDK's actions the Durable extension acts on, and when: its out-of-proc shim, replayed here.

The extension does not schedule everything the SDK returns at once. Its
`OutOfProcOrchestrationShim.ProcessAsyncActionsV2` (Azure/azure-functions-durable-extension,
`src/WebJobs.Extensions.DurableTask/Listener/OutOfProcOrchestrationShim.cs`) walks the top-level
actions of replay schema 2 in order, invokes each (`InvokeAPIFromAction`: the activity, timer,
sub-orchestration or wait it stands for, every child of a WhenAll/WhenAny) and *awaits* it
before it looks at the next one; an exception from an awaited task is swallowed. So on every
episode the walk stops at the first top-level action that is not complete, and actions after
it are neither scheduled nor looked at, even when the SDK has moved on. What "complete" means
is .NET's:

- an activity, sub-orchestration or timer: its result (success or failure) or firing is in history;
- with retry: the last attempt succeeded, or the attempts are used up and the extra timer fired
  (the extension's retry loop, which the SDK's `RetryAbleTask` mirrors);
- a timer the SDK marked `isCanceled`: at once (a cancelled `CancellationToken`);
- `WaitForExternalEvent(name)`: an `EventRaised` of that name is there for it; waits of one name
  take the raised events first come, first served, including waits nobody awaits any more
  (the extension keeps a queue of waiters per name and buffers events raised before a wait);
- WhenAll = `Task.WhenAll`: *every* child complete (it does not fail fast, unlike the SDK's
  `task_all`); WhenAny = `Task.WhenAny`: any child complete; an empty WhenAny throws
  (`ArgumentException`), which fails the orchestration;
- `ContinueAsNew`: at once (fire and forget).

Only when the walk reaches the end does the extension look at `isDone` / `error`
(`ScheduleDurableTaskEvents` awaits the replay first), so an orchestrator that returned or
raised while an earlier action is still incomplete stays Running until that action completes.

When `task_any` is given tasks that were started earlier, the SDK emits a WhenAny holding only
the new ones (its own test `test_sequential_orchestrator.py`, `test_reducing_when_any_pattern`,
expects `[WhenAny([Seattle, Tokyo]), WhenAny([London])]`); the shim then waits for the new
tasks alone, whatever the old ones do.

Sequence numbers are the extension's (DTFx's): one per activity / timer / sub-orchestration,
in the order the shim invokes them, depth first through compound actions. Every scheduling
row records the top-level action it belongs to (`Meta.top`) and every retry row the first
attempt's number (`Meta.retry.root`), so a later episode can tell which actions are complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devhost.durable import actions as act
from devhost.durable.history import EventType
from devhost.durable.store import HistoryRow

_NUMBERED = (act.ACTIVITY, act.ACTIVITY_RETRY, act.SUB, act.SUB_RETRY, act.TIMER)
_SUCCESS = {EventType.TASK_COMPLETED, EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED}


class ShimFailure(Exception):
    """The extension would throw while invoking an action (the orchestration fails)."""


@dataclass
class _View:
    """What history (plus this episode's new events and rows) says about scheduled tasks."""

    results: dict[tuple[bool, int], dict[str, Any]] = field(default_factory=dict)
    ids_by_top: dict[int, list[int]] = field(default_factory=dict)
    chains: dict[int, list[HistoryRow]] = field(default_factory=dict)
    raised: Counter[str] = field(default_factory=Counter)

    def add(self, rows: Iterable[HistoryRow]) -> None:
        for r in rows:
            ev = r.event
            t = ev["EventType"]
            target = act.completion_target(ev)
            if target is not None:
                self.results.setdefault(target, ev)
            elif t == EventType.EVENT_RAISED:
                self.raised[str(ev.get("Name"))] += 1
            elif t in (EventType.TASK_SCHEDULED, EventType.SUB_ORCHESTRATION_INSTANCE_CREATED, EventType.TIMER_CREATED):
                top = r.meta.get("top")
                if top is not None:
                    self.ids_by_top.setdefault(int(top), []).append(int(ev["EventId"]))
                retry = r.meta.get("retry")
                if retry is not None and retry.get("root") is not None:
                    self.chains.setdefault(int(retry["root"]), []).append(r)


@dataclass
class ShimPlan(act.Plan):
    """New history rows and work, and whether the shim got past every top-level action."""

    seen: int = 0
    finished: bool = False


def _is_timer(row: HistoryRow) -> bool:
    return bool(row.event["EventType"] == EventType.TIMER_CREATED)


class _Walk:
    """One top-level action's atomic actions, matched to their sequence numbers and waits."""

    def __init__(self, view: _View, waits: Counter[str]) -> None:
        self.view = view
        self.waits = waits  # waits per event name invoked before this one

    def complete(self, action: dict[str, Any], ids: list[int]) -> bool:
        t = action.get("actionType")
        if t in (act.WHEN_ALL, act.WHEN_ANY):
            children = action.get("compoundActions") or []
            if t == act.WHEN_ANY and not children:
                raise ShimFailure("The tasks argument contains no tasks. (Task.WhenAny in the extension's shim)")
            done = [self.complete(c, ids) for c in children]  # every child: ids and waits are consumed in order
            return all(done) if t == act.WHEN_ALL else any(done)
        if t == act.CONTINUE_AS_NEW:
            return True
        if t == act.EXTERNAL_EVENT:
            name = str(action.get("externalEventName"))
            ordinal = self.waits[name]
            self.waits[name] += 1
            return self.view.raised[name] > ordinal
        if t not in _NUMBERED:
            raise act.UnsupportedAction(f"devhost does not run durable action type {t}")
        seq = ids.pop(0)
        if t == act.TIMER:
            return bool(action.get("isCanceled")) or (True, seq) in self.view.results
        if t in (act.ACTIVITY_RETRY, act.SUB_RETRY):
            return self._retry_done(seq)
        return (False, seq) in self.view.results

    def _retry_done(self, root: int) -> bool:
        for row in self.view.chains.get(root, []):
            if _is_timer(row):
                retry = row.meta["retry"]
                if int(retry["attempt"]) >= int(retry["max"]) and (True, row.event["EventId"]) in self.view.results:
                    return True  # the extra timer after the last failed attempt fired: the task failed
            else:
                result = self.view.results.get((False, int(row.event["EventId"])))
                if result is not None and result["EventType"] in _SUCCESS:
                    return True
        return False


def advance(
    state: dict[str, Any], rows: list[HistoryRow], seen: int, next_seq: int, instance_id: str, now: datetime
) -> ShimPlan:
    """Replay the shim over the SDK's cumulative actions: schedule what it would invoke now.

    `rows` is the committed history plus this episode's new events; `seen` is how many top-level
    actions the shim has invoked in earlier episodes. Raises `act.UnsupportedAction` or
    `ShimFailure` when the orchestration must fail.
    """
    top = state.get("actions") or [[]]
    top_level: list[dict[str, Any]] = top[0] if top else []
    view = _View()
    view.add(rows)
    plan = ShimPlan([], [], next_seq, seen=seen)
    walk = _Walk(view, Counter())
    index = 0
    while index < len(top_level):
        action = top_level[index]
        if index >= plan.seen:  # first time the shim reaches it: invoke (schedule) it
            new = act.plan_new_actions({"actions": [[action]]}, 0, plan.next_seq, instance_id, now)[0]
            for row in new.rows:
                row.meta["top"] = index
            plan.rows.extend(new.rows)
            plan.work.extend(new.work)
            plan.next_seq = new.next_seq
            if new.continue_as_new:
                plan.continue_as_new, plan.continue_input = True, new.continue_input
            view.add(new.rows)
            plan.seen = index + 1
        elif any(a.get("actionType") == act.CONTINUE_AS_NEW for a in act.atomic_actions(action)):
            plan.continue_as_new = True
            plan.continue_input = next(
                a.get("input") for a in act.atomic_actions(action) if a.get("actionType") == act.CONTINUE_AS_NEW
            )
        if not walk.complete(action, list(view.ids_by_top.get(index, []))):
            break
        index += 1
    plan.finished = index == len(top_level)
    return plan
