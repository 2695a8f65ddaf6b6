"""Conformance of devhost's action processing with the Durable extension's out-of-proc shim.

The rules come from the extension's `OutOfProcOrchestrationShim.ProcessAsyncActionsV2`
(Azure/azure-functions-durable-extension): top-level actions are invoked one at a time in
order, each awaited before the next (.NET `Task.WhenAll` / `Task.WhenAny` for compound actions,
exceptions swallowed), and `isDone` / `error` count only once every action is complete. The
action lists are the SDK's own: every episode runs the real `azure-functions-durable` handle
over the history built so far, and the first case is the SDK's
`test_sequential_orchestrator.py::test_reducing_when_any_pattern`, which expects
`[WhenAny([Seattle, Tokyo]), WhenAny([London])]`.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df

from devhost.durable import actions as act
from devhost.durable import history as h
from devhost.durable import shim
from devhost.durable.store import HistoryRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Sim:
    """The engine's episode logic over an in-memory history, driving the SDK's own handle."""

    def __init__(self, fn: Any, input_: Any = None) -> None:
        self.handle = df.Orchestrator.create(fn)
        self.input = input_
        self.rows: list[HistoryRow] = []
        self.seen = 0
        self.next_seq = 0
        self.state: dict[str, Any] = {}
        self.outcome = "running"

    def _sdk(self, rows: list[HistoryRow]) -> dict[str, Any]:
        context = {
            "history": [r.event for r in rows],
            "input": json.dumps(self.input),
            "instanceId": "i1",
            "isReplaying": False,
            "parentInstanceId": None,
            "upperSchemaVersion": 2,
        }
        try:
            return dict(json.loads(self.handle(json.dumps(context))))
        except Exception as exc:  # the SDK raises with the state after `$OutOfProcData$:`
            return dict(json.loads(str(exc).split("$OutOfProcData$:", 1)[1]))

    def episode(self, *events: dict[str, Any]) -> list[tuple[str, int]]:
        """Run one episode over `events`; returns the work scheduled: (input or kind, sequence number)."""
        new = [HistoryRow(h.orchestrator_started(NOW), {}, None)]
        if not self.rows:
            new.append(HistoryRow(h.execution_started("o", json.dumps(self.input), NOW, None), {}, None))
        new += [HistoryRow(e, {}, None) for e in events]
        self.state = self._sdk(self.rows + new)
        scheduled = act.scheduling_rows(self.rows + new)
        plan = shim.advance(self.state, self.rows + new, self.seen, self.next_seq, "i1", NOW)
        work: list[act.Work] = []
        if plan.finished and self.state.get("error"):
            self.outcome = "failed"
        elif plan.finished and self.state.get("isDone"):
            self.outcome = "completed"
        else:
            new += plan.rows
            work += plan.work
            self.seen, self.next_seq = plan.seen, plan.next_seq
            if events and act.allocates(events[-1], scheduled):
                step = act.plan_retry_step(events[-1], scheduled, self.next_seq, "i1", NOW)
                new += step.rows
                work += step.work
                self.next_seq = step.next_seq
        new.append(HistoryRow(h.orchestrator_completed(NOW), {}, None))
        self.rows += new
        return [(json.loads(w.input) if w.input else w.kind, w.event_id) for w in work]

    def top_level(self) -> list[dict[str, Any]]:
        return list(self.state["actions"][0])


def done(seq: int, value: Any) -> dict[str, Any]:
    return h.task_completed(seq, json.dumps(value))


def names(action: dict[str, Any]) -> list[Any]:
    return [json.loads(a["input"]) for a in act.atomic_actions(action)]


# --- the SDK's own case: task_any over tasks started earlier ---------------------------------
def reuse_task_in_whenany(context: df.DurableOrchestrationContext):  # the SDK test's orchestrator
    task1 = context.call_activity("Hello", "Tokyo")
    task2 = context.call_activity("Hello", "Seattle")
    pending = [task1, task2]
    finished = yield context.task_any(pending)
    pending.remove(finished)
    task3 = context.call_activity("Hello", "London")
    yield context.task_any([*pending, task3])
    return ""


def test_the_sdk_emits_a_whenany_of_new_tasks_only_and_the_shim_waits_for_it_alone() -> None:
    sim = Sim(reuse_task_in_whenany)
    assert sim.episode() == [("Tokyo", 0), ("Seattle", 1)]
    assert sim.episode(done(1, "Hello Seattle!")) == [("London", 2)]
    top = sim.top_level()
    assert [(a["actionType"], sorted(names(a))) for a in top] == [
        (act.WHEN_ANY, ["Seattle", "Tokyo"]),
        (act.WHEN_ANY, ["London"]),
    ]  # the SDK's expected list: WhenAny([Seattle, Tokyo]), WhenAny([London])
    # Tokyo finishes: the SDK's task_any returns and the orchestrator is done, but the shim
    # awaits WhenAny([London]), so the instance keeps running until London completes.
    assert sim.episode(done(0, "Hello Tokyo!")) == []
    assert sim.state["isDone"] is True and sim.outcome == "running"
    assert sim.episode(done(2, "Hello London!")) == []
    assert sim.outcome == "completed"


def lanes_by_task_any(context: df.DurableOrchestrationContext):
    """The old billing fan-out shape: refill a lane with task_any over running tasks."""
    fast, slow = context.call_activity("A", "fast"), context.call_activity("A", "slow")
    yield context.task_any([fast, slow])
    third = context.call_activity("A", "third")
    yield context.task_any([slow, third])  # -> WhenAny([third])
    after = yield context.call_activity("A", "after")
    return after


def test_work_yielded_after_a_stalled_whenany_starts_only_when_the_shim_gets_there() -> None:
    sim = Sim(lanes_by_task_any)
    assert sim.episode() == [("fast", 0), ("slow", 1)]
    assert sim.episode(done(0, 0)) == [("third", 2)]
    # `slow` ends first: the SDK moves on and yields `after`; the extension does not start it.
    assert sim.episode(done(1, 1)) == []
    assert [names(a) for a in sim.top_level()][-1] == ["after"]
    assert sim.episode(done(2, 2)) == [("after", 3)]  # numbered by the shim, as the SDK numbered it
    sim.episode(done(3, "end"))
    assert (sim.outcome, sim.state["output"]) == ("completed", "end")


# --- WhenAll does not fail fast in the shim ---------------------------------------------------
def all_then_next(context: df.DurableOrchestrationContext):
    with contextlib.suppress(Exception):  # the SDK's task_all fails fast: user code continues at once
        yield context.task_all([context.call_activity("A", "bad"), context.call_activity("A", "slow")])
    return (yield context.call_activity("A", "next"))


def test_whenall_waits_for_every_child_even_after_one_failed() -> None:
    sim = Sim(all_then_next)
    assert sim.episode() == [("bad", 0), ("slow", 1)]
    assert sim.episode(h.task_failed(0, "boom", "")) == []  # Task.WhenAll still awaits `slow`
    assert [names(a) for a in sim.top_level()][-1] == ["next"]
    assert sim.episode(done(1, 1)) == [("next", 2)]
    sim.episode(done(2, "n"))
    assert sim.outcome == "completed"


# --- sub-orchestrations and timers ------------------------------------------------------------
def sub_and_timers(context: df.DurableOrchestrationContext):
    child = context.call_sub_orchestrator("child", "c", "child-1")
    first = context.create_timer(context.current_utc_datetime + timedelta(minutes=1))
    yield context.task_any([child, first])  # the timer wins
    second = context.create_timer(context.current_utc_datetime + timedelta(minutes=2))
    yield context.task_any([child, second])  # -> WhenAny([second timer])
    return (yield context.call_activity("A", "after"))


def test_sub_orchestrations_and_timers_follow_the_shim() -> None:
    sim = Sim(sub_and_timers)
    assert sim.episode() == [("c", 0), ("timer", 1)]
    fire1 = sim.rows[3].event["FireAt"]
    assert sim.episode(h.timer_fired(1, fire1)) == [("timer", 2)]
    # the child finishes: the SDK yields the activity, the shim awaits the second timer
    assert sim.episode(h.sub_orchestration_completed(0, json.dumps("child done"))) == []
    fire2 = next(r.event["FireAt"] for r in sim.rows if r.event.get("EventId") == 2)
    assert sim.episode(h.timer_fired(2, fire2)) == [("after", 3)]
    sim.episode(done(3, "x"))
    assert sim.outcome == "completed"


def cancelled_timer(context: df.DurableOrchestrationContext):
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    approval = context.wait_for_external_event("approve")
    winner = yield context.task_any([approval, timeout])
    if winner == approval:
        timeout.cancel()
    return (yield context.call_activity("A", "after"))


def test_external_events_and_cancelled_timers_complete_their_actions() -> None:
    sim = Sim(cancelled_timer)
    assert sim.episode() == [("timer", 0)]
    assert sim.episode(h.event_raised("approve", "true")) == [("after", 1)]
    sim.episode(done(1, "ok"))
    assert sim.outcome == "completed"


def buffered_event(context: df.DurableOrchestrationContext):
    yield context.call_activity("A", "first")
    return (yield context.wait_for_external_event("go"))


def test_an_event_raised_before_the_wait_is_buffered_for_it() -> None:
    sim = Sim(buffered_event)
    assert sim.episode() == [("first", 0)]
    assert sim.episode(h.event_raised("go", json.dumps("early"))) == []
    sim.episode(done(0, 1))
    assert (sim.outcome, sim.state["output"]) == ("completed", "early")


# --- retries ----------------------------------------------------------------------------------
def retry_in_whenany(context: df.DurableOrchestrationContext):
    flaky = context.call_activity_with_retry("F", df.RetryOptions(1000, 2), "flaky")
    other = context.call_activity("A", "other")
    with contextlib.suppress(Exception):
        yield context.task_all([flaky, other])
    return (yield context.call_activity("A", "after"))


def test_a_retried_task_is_complete_only_after_the_extra_timer_of_its_last_attempt() -> None:
    sim = Sim(retry_in_whenany)
    assert sim.episode() == [("flaky", 0), ("other", 1)]
    assert sim.episode(done(1, 1)) == []
    assert sim.episode(h.task_failed(0, "boom", "")) == [("timer", 2)]
    fire = next(r.event["FireAt"] for r in sim.rows if r.event.get("EventId") == 2)
    assert sim.episode(h.timer_fired(2, fire)) == [("flaky", 3)]
    assert sim.episode(h.task_failed(3, "boom", "")) == [("timer", 4)]  # attempts used up: the extra timer
    fire = next(r.event["FireAt"] for r in sim.rows if r.event.get("EventId") == 4)
    assert sim.episode(h.timer_fired(4, fire)) == [("after", 5)]
    sim.episode(done(5, "a"))
    assert (sim.outcome, sim.state["output"]) == ("completed", "a")


def test_a_retried_task_that_succeeds_completes_its_action() -> None:
    sim = Sim(retry_in_whenany)
    sim.episode()
    sim.episode(h.task_failed(0, "boom", ""))
    fire = next(r.event["FireAt"] for r in sim.rows if r.event.get("EventId") == 2)
    assert sim.episode(h.timer_fired(2, fire)) == [("flaky", 3)]
    assert sim.episode(done(3, "ok"), done(1, 1)) == [("after", 4)]


def raises_while_waiting(context: df.DurableOrchestrationContext):
    a, b = context.call_activity("A", "a"), context.call_activity("A", "b")
    yield context.task_any([a, b])
    c = context.call_activity("A", "c")
    yield context.task_any([b, c])
    raise ValueError("gave up")


def test_an_error_counts_only_once_the_shim_has_passed_every_action() -> None:
    sim = Sim(raises_while_waiting)
    sim.episode()
    assert sim.episode(done(0, 0)) == [("c", 2)]
    sim.episode(done(1, 1))  # the SDK raised; the shim still awaits WhenAny([c])
    assert sim.state.get("error") and sim.outcome == "running"
    sim.episode(done(2, 2))
    assert sim.outcome == "failed"
