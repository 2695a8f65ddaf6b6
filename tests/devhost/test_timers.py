"""devhost's timer triggers: NCRONTAB parsing and next occurrences, the listener's schedule, and a
timer function really running under devhost (tests/devhost/apps/timer_app)."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devhost.invoke import FunctionFailed
from devhost.loader import FunctionInfo
from devhost.ncrontab import InvalidSchedule, parse
from devhost.services import Service, start_devhost
from devhost.timer_status import DOTNET_MIN_DATE, ScheduleStatus, StorageScheduleMonitor
from devhost.timers import TimerTriggerListener, timer_info
from devhost.worker import WorkerError

APP_DIR = Path(__file__).parent / "apps" / "timer_app"
T0 = datetime(2026, 12, 2, 15, 4, 59, 500_000, tzinfo=UTC)  # a Wednesday


def test_six_field_schedules_give_the_next_occurrence_strictly_after_the_base() -> None:
    assert parse("0 */5 * * * *").next_after(T0) == datetime(2026, 12, 2, 15, 5, tzinfo=UTC)
    assert parse("0 * * * * *").next_after(datetime(2026, 12, 2, 15, 5, tzinfo=UTC)) == datetime(
        2026, 12, 2, 15, 6, tzinfo=UTC)  # never the base itself
    assert parse("*/15 * * * * *").next_after(T0) == datetime(2026, 12, 2, 15, 5, 0, tzinfo=UTC)
    assert parse("30 0 9 * * Mon-Fri").next_after(datetime(2026, 12, 5, 10, tzinfo=UTC)) == datetime(
        2026, 12, 7, 9, 0, 30, tzinfo=UTC)  # Saturday -> Monday
    assert parse("0 0 0 29 Feb *").next_after(T0) == datetime(2028, 2, 29, tzinfo=UTC)
    assert parse("0 0 0 31 * *").next_after(datetime(2026, 4, 1, tzinfo=UTC)) == datetime(2026, 5, 31, tzinfo=UTC)
    assert parse("0 0 12 1-7 * 1").next_after(T0) == datetime(2026, 12, 7, 12, tzinfo=UTC)  # day AND weekday (OR: the 3rd)
    assert parse("0 0 0 30 2 *").next_after(T0) is None
    assert parse("5/20 0 0 * * *").seconds == frozenset({5, 25, 45})  # a/n is a-max/n, as NCrontab
    assert parse("0 0 0 * jan,MAR *").months == frozenset({1, 3})
    assert parse("0 0 0 * * 0,6").weekdays == frozenset({0, 6})


@pytest.mark.parametrize("expression", [
    "* * * * *",  # 5 fields: the timer trigger parses with seconds
    "00:05:00",  # a TimeSpan: App Service plans only
    "60 * * * * *", "* * 24 * * *", "* * * 0 * *", "* * * * 13 *", "* * * * * 7",
    "*/0 * * * * *", "1-2-3 * * * * *", "-1 * * * * *", "a * * * * *", "* * * * Foo *", ", * * * * *",
])
def test_schedules_the_timers_extension_refuses_are_refused(expression: str) -> None:
    with pytest.raises(InvalidSchedule):
        parse(expression)


class _Invoker:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def invoke(self, fn: FunctionInfo, trigger: Any, **kw: Any) -> None:
        self.calls.append({"payload": json.loads(trigger.json), "meta": kw.get("trigger_metadata")})
        if self.fail:
            raise FunctionFailed(fn.name, WorkerError("ValueError: boom", ""))


def _fn(schedule: str, **extra: Any) -> FunctionInfo:
    trigger = {"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": schedule, **extra}
    return FunctionInfo(name="t", function_id="id", bindings=[trigger], trigger=trigger)


def test_the_listener_sends_timer_info_and_schedules_from_the_later_of_start_and_occurrence() -> None:
    invoker = _Invoker(fail=True)  # a failing run does not stop the schedule
    now = [T0]
    listener = TimerTriggerListener(_fn("0 * * * * *"), invoker, None, clock=lambda: now[0])  # type: ignore[arg-type]
    assert listener.use_monitor and not listener.run_on_startup
    assert listener.next == datetime(2026, 12, 2, 15, 5, tzinfo=UTC)
    first = listener.next
    now[0] = first - timedelta(milliseconds=3)  # fired a little early (clock skew): Next still moves on
    listener._fire(now[0], scheduled=first)
    assert listener.next == datetime(2026, 12, 2, 15, 6, tzinfo=UTC)
    payload = invoker.calls[0]["payload"]
    assert payload == {"Schedule": {"AdjustForDST": True}, "IsPastDue": False, "ScheduleStatus": {
        "Last": DOTNET_MIN_DATE, "Next": "2026-12-02T15:05:00+00:00", "LastUpdated": DOTNET_MIN_DATE}}
    now[0] = datetime(2026, 12, 2, 15, 8, 30, tzinfo=UTC)  # a run that ended late: one run, then the next minute
    listener._fire(now[0], scheduled=listener.next)
    assert listener.next == datetime(2026, 12, 2, 15, 9, tzinfo=UTC)
    assert invoker.calls[1]["payload"]["ScheduleStatus"]["Last"] == "2026-12-02T15:05:00+00:00"
    assert listener.runs == 2


def test_sub_minute_schedules_have_no_monitor_and_settings_can_override() -> None:
    now = lambda: T0  # noqa: E731
    assert not TimerTriggerListener(_fn("*/10 * * * * *"), _Invoker(), None, clock=now).use_monitor  # type: ignore[arg-type]
    forced = TimerTriggerListener(_fn("*/10 * * * * *", useMonitor=True, runOnStartup=True), _Invoker(), None,
                                  clock=now)  # type: ignore[arg-type]
    assert forced.use_monitor and forced.run_on_startup
    assert json.loads(timer_info(None))["ScheduleStatus"] is None


def _status(**times: str) -> bytes:
    return json.dumps({"Last": times.get("last", DOTNET_MIN_DATE), "Next": times["next"],
                       "LastUpdated": times.get("updated", DOTNET_MIN_DATE)}).encode()


def test_the_status_monitor_records_a_new_timer_and_finds_missed_occurrences(azurite: Service) -> None:
    monitor = StorageScheduleMonitor(azurite.extra["connection_string"], "monitor-" + uuid.uuid4().hex[:8])
    hourly = parse("0 0 * * * *")
    past_due, status = monitor.check_past_due("Host.Functions.t", T0, hourly, monitor.get("Host.Functions.t"))
    assert not past_due and status.next == datetime(2026, 12, 2, 16, tzinfo=UTC)  # a new timer: recorded, not run
    assert monitor.get("Host.Functions.t") == status
    later = T0 + timedelta(hours=3)  # the host was down over three occurrences: one past-due run
    assert monitor.check_past_due("Host.Functions.t", later, hourly, monitor.get("Host.Functions.t"))[0]
    # the schedule changed while the host was down: a new Next from now, not "past due"
    daily = parse("0 30 6 * * *")
    past_due, status = monitor.check_past_due("Host.Functions.t", later, daily, monitor.get("Host.Functions.t"))
    assert not past_due and status.next == datetime(2026, 12, 3, 6, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def timer_app(azurite: Service, artifacts_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Path, StorageScheduleMonitor]]:
    log = tmp_path_factory.mktemp("timer_app") / "runs.jsonl"
    host = "timer-test-" + uuid.uuid4().hex[:8]
    monitor = StorageScheduleMonitor(azurite.extra["connection_string"], host)
    # `yearly` last ran on New Year 2025 and its host was down over New Year 2026: past due at start
    monitor.update("Host.Functions.yearly", ScheduleStatus.from_json(json.loads(_status(
        last="2025-01-01T00:00:00+00:00", next="2026-01-01T00:00:00+00:00", updated="2025-01-01T00:00:00+00:00"))))
    env = {"TICK_SCHEDULE": "*/1 * * * * *", "TIMER_LOG": str(log), "SLOW_SECONDS": "1.5",
           "AzureWebJobsStorage": azurite.extra["connection_string"], "AzureFunctionsJobHost__id": host}
    svc = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-timer-app.log", ready_path="/api/ping")
    yield svc, log, monitor
    svc.stop()


@pytest.mark.integration
def test_timer_functions_run_under_devhost_one_at_a_time(
    timer_app: tuple[Service, Path, StorageScheduleMonitor]
) -> None:
    _svc, log, monitor = timer_app
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if sum(r["fn"] == "tick" for r in rows) >= 3 and sum(r["fn"] == "slow" for r in rows) >= 3:
            break
        time.sleep(0.3)
    ticks = [r for r in rows if r["fn"] == "tick"]
    slow = sorted((r for r in rows if r["fn"] == "slow"), key=lambda r: r["started"])
    assert len(ticks) >= 3 and len(slow) >= 3, rows
    every_second = ticks + slow
    assert all(r["past_due"] is False and r["schedule"] == {"AdjustForDST": True} for r in every_second)
    assert all(r["schedule_status"] == {} for r in every_second)  # sub-minute schedules: no monitor, status null
    # every second, but a run of 1.5 s: never two at once, and the missed seconds do not pile up
    assert all(b["started"] >= a["ended"] for a, b in itertools.pairwise(slow))

    yearly = [r for r in rows if r["fn"] == "yearly"]
    assert len(yearly) == 1 and yearly[0]["past_due"] is True  # the missed New Year, once, at start
    assert yearly[0]["schedule_status"] == {"Last": "2025-01-01T00:00:00+00:00", "Next": "2026-01-01T00:00:00+00:00",
                                            "LastUpdated": "2025-01-01T00:00:00+00:00"}
    after = monitor.get("Host.Functions.yearly")
    assert after is not None and after.next == datetime(2027, 1, 1, tzinfo=UTC)  # stored after the run
    assert monitor.get("Host.Functions.tick") is None  # not monitored: nothing stored
