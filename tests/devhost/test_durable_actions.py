"""Unit tests for the durable engine's pure parts: action numbering, retry steps, the API's JSON helpers.

The numbering rules are checked against the SDK itself: the histories built here are fed
back through the SDK's own orchestrator handle, which must resolve every task.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from devhost.durable import actions as act
from devhost.durable import history as h
from devhost.durable.api import body_to_json_text, history_json
from devhost.durable.store import HistoryRow, InboxItem

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _sdk(fn: Any, rows: list[HistoryRow], input_: Any = None) -> dict[str, Any]:
    handle = df.Orchestrator.create(fn)
    context = {
        "history": [r.event for r in rows],
        "input": json.dumps(input_),
        "instanceId": "i1",
        "isReplaying": False,
        "parentInstanceId": None,
        "upperSchemaVersion": 2,
    }
    try:
        return json.loads(handle(json.dumps(context)))
    except Exception as exc:  # the SDK raises with the state after `$OutOfProcData$:`
        return json.loads(str(exc).split("$OutOfProcData$:", 1)[1])


def _start() -> list[HistoryRow]:
    return [
        HistoryRow(h.orchestrator_started(NOW), {}, None),
        HistoryRow(h.execution_started("o", "null", NOW, None), {}, None),
    ]


def _episode_end(rows: list[HistoryRow]) -> None:
    rows.append(HistoryRow(h.orchestrator_completed(NOW), {}, None))
    rows.append(HistoryRow(h.orchestrator_started(NOW), {}, None))


def test_compound_actions_are_numbered_depth_first_and_external_events_take_no_number() -> None:
    def orch(ctx: df.DurableOrchestrationContext):
        a = ctx.call_activity("A", 1)
        b = ctx.call_activity_with_retry("B", df.RetryOptions(100, 2), 2)
        e = ctx.wait_for_external_event("go")
        t = ctx.create_timer(NOW.replace(year=2027))
        yield ctx.task_all([a, ctx.task_any([e, t]), b])
        return "done"

    rows = _start()
    state = _sdk(orch, rows)
    plan, seen = act.plan_new_actions(state, 0, 0, "i1", NOW)
    assert seen == 1
    assert [(w.kind, w.event_id) for w in plan.work] == [("activity", 0), ("timer", 1), ("activity", 2)]
    assert plan.rows[2].meta["retry"]["max"] == 2
    # the SDK resolves the tasks by exactly these numbers
    rows += plan.rows
    _episode_end(rows)
    rows += [
        HistoryRow(h.task_completed(0, "1"), {}, None),
        HistoryRow(h.event_raised("go", "true"), {}, None),
        HistoryRow(h.task_completed(2, "2"), {}, None),
    ]
    assert _sdk(orch, rows)["output"] == "done"


def _retry_orch(ctx: df.DurableOrchestrationContext):
    first = yield ctx.call_activity_with_retry("Flaky", df.RetryOptions(1000, 2), None)
    second = yield ctx.call_activity("After", first)
    return second


def test_retry_steps_follow_the_sdk_including_the_extra_timer_after_the_last_attempt() -> None:
    rows = _start()
    plan, _seen = act.plan_new_actions(_sdk(_retry_orch, rows), 0, 0, "i1", NOW)
    rows += plan.rows
    seq = plan.next_seq
    for attempt in (1, 2):
        _episode_end(rows)
        failed = h.task_failed(seq - 1, "boom", "x")
        scheduled = act.scheduling_rows(rows)
        assert act.allocates(failed, scheduled)
        rows.append(HistoryRow(failed, {}, None))
        step = act.plan_retry_step(failed, scheduled, seq, "i1", NOW)
        assert step.rows[0].event["EventType"] == h.EventType.TIMER_CREATED
        rows += step.rows
        seq = step.next_seq
        assert "error" not in _sdk(_retry_orch, rows)
        _episode_end(rows)
        fired = h.timer_fired(seq - 1, step.rows[0].event["FireAt"])
        scheduled = act.scheduling_rows(rows)
        assert act.allocates(fired, scheduled) is (attempt < 2)
        rows.append(HistoryRow(fired, {}, None))
        step = act.plan_retry_step(fired, scheduled, seq, "i1", NOW)
        rows += step.rows
        seq = step.next_seq
    # two attempts and two timers (0..3): after the extra timer fired, the SDK fails the task
    assert seq == 4
    assert _sdk(_retry_orch, rows)["error"] == "boom \n x"


def test_retry_success_on_second_attempt_then_next_activity_gets_the_next_number() -> None:
    rows = _start()
    plan, _ = act.plan_new_actions(_sdk(_retry_orch, rows), 0, 0, "i1", NOW)
    rows += plan.rows
    _episode_end(rows)
    failed = h.task_failed(0, "boom", "x")
    step = act.plan_retry_step(failed, act.scheduling_rows(rows), 1, "i1", NOW)
    rows += [HistoryRow(failed, {}, None), *step.rows]
    _episode_end(rows)
    fired = h.timer_fired(1, step.rows[0].event["FireAt"])
    step = act.plan_retry_step(fired, act.scheduling_rows(rows), 2, "i1", NOW)
    assert step.rows[0].event["EventId"] == 2 and step.rows[0].meta["retry"]["attempt"] == 2
    rows += [HistoryRow(fired, {}, None), *step.rows]
    _episode_end(rows)
    rows.append(HistoryRow(h.task_completed(2, '"ok"'), {}, None))
    state = _sdk(_retry_orch, rows)
    plan, _seen = act.plan_new_actions(state, 1, 3, "i1", NOW)
    assert [(w.name, w.event_id, w.input) for w in plan.work] == [("After", 3, '"ok"')]


def test_sub_orchestrations_get_a_derived_instance_id_unless_given() -> None:
    state = {
        "actions": [
            [
                {"actionType": 2, "functionName": "c", "input": "1", "instanceId": None},
                {"actionType": 2, "functionName": "c", "input": "2", "instanceId": "fixed"},
            ]
        ]
    }
    plan, _ = act.plan_new_actions(state, 0, 5, "p", NOW)
    assert [w.instance_id for w in plan.work] == ["p:5", "fixed"]


def test_unsupported_actions_are_refused() -> None:
    state = {"actions": [[{"actionType": 8, "httpRequest": {}}]]}
    try:
        act.plan_new_actions(state, 0, 0, "p", NOW)
    except act.UnsupportedAction:
        return
    raise AssertionError("durable HTTP must be refused")


def test_client_bodies_are_json_text_whether_encoded_once_or_twice() -> None:
    assert body_to_json_text(json.dumps(json.dumps({"a": 1})).encode()) == '{"a": 1}'
    assert body_to_json_text(json.dumps({"a": 1}).encode()) == '{"a": 1}'
    assert body_to_json_text(b'"plain words"') == '"plain words"'
    assert body_to_json_text(b"") is None


def test_history_json_folds_scheduling_into_results() -> None:
    events = [r.event for r in _start()] + [h.task_scheduled(0, "A", '"x"', NOW), h.task_completed(0, '"y"')]
    shown = history_json(events, show_output=True)
    assert [e["EventType"] for e in shown] == ["ExecutionStarted", "TaskCompleted"]
    assert shown[1]["FunctionName"] == "A" and shown[1]["Result"] == "y"
    assert "Result" not in history_json(events, show_output=False)[1]


def test_episode_selection_drops_duplicates_and_stops_at_retry_steps_and_terminate() -> None:
    retry = {"kind": "activity", "name": "F", "input": None, "attempt": 1, "max": 3, "first_ms": 10}
    rows = [
        *_start(),
        HistoryRow(h.task_scheduled(0, "A", None, NOW), {}, None),
        HistoryRow(h.task_scheduled(1, "F", None, NOW), {"retry": retry}, None),
        HistoryRow(h.task_scheduled(2, "B", None, NOW), {}, None),
        HistoryRow(h.task_completed(0, "1"), {}, "k0"),
    ]
    inbox = [
        InboxItem("k0", h.task_completed(0, "1"), 0),  # already in history (crash before delete)
        InboxItem("k1", h.task_completed(0, "1"), 0),  # a re-run activity's second result
        InboxItem("k2", h.task_completed(7, "1"), 3),  # an earlier generation's result
        InboxItem("k3", h.event_raised("go", "true"), -1),
        InboxItem("k4", h.task_failed(1, "boom", ""), 0),  # retry step: ends the batch
        InboxItem("k5", h.task_completed(2, "2"), 0),
    ]
    sel = act.select_new_events(inbox, rows, 0)
    assert sel.drop == ["k0", "k1", "k2"]
    assert [i.key for i in sel.batch] == ["k3", "k4"] and sel.more and sel.terminate is None
    stop = InboxItem("k6", h.execution_terminated("stop"), -1)
    sel = act.select_new_events([*inbox[3:4], stop, *inbox[5:]], rows, 0)
    assert sel.terminate is stop and sel.batch == [stop] and sel.more
