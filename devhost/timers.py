"""Timer triggers: run a function on its NCRONTAB schedule, as the Functions timers extension does.

Modelled on Azure/azure-webjobs-sdk-extensions, `Extensions/Timers/`:

- **Schedule**: six-field NCRONTAB only (`devhost.ncrontab`; `CronSchedule.TryCreate` parses with
  `IncludingSeconds = true`), `%Setting%` expressions resolved from app settings first
  (`TimerTriggerAttributeBindingProvider`). A schedule that does not parse fails the host's start,
  as a function with a bad schedule does not index on Azure. Times are UTC: the extension uses the
  machine's local time, which is UTC on Azure unless `WEBSITE_TIME_ZONE` is set (not supported on
  Linux Consumption / Flex Consumption), and devhost does not read that setting.
- **One execution at a time per function** (`TimerListener`: `[Singleton(Mode = Listener)]` and an
  invocation semaphore): the next occurrence is computed after the invocation ends, from the later of
  the invocation's start and the occurrence it served (`InvokeJobFunction`, "adjustedInvocationTime"),
  and a timer whose next occurrence has already passed fires at once (`GetNextTimerInterval`: one
  tick), so occurrences missed during a long run collapse into one run, not a burst.
- **runOnStartup**: false unless the binding says true (`TimerTriggerAttribute.RunOnStartup`); then
  one immediate run at start, with `IsPastDue` false.
- **useMonitor**: defaults to true unless the schedule fires more than once within a minute
  (`TimerTriggerAttribute` constructor); with it, `ScheduleStatus` {Last, Next, LastUpdated} is sent,
  persisted in blob storage after every run, and checked at start: a missed occurrence runs once at
  once with `IsPastDue: true` (devhost/timer_status.py: `StorageScheduleMonitorV2`,
  `CheckPastDueAsync`). Without it, `ScheduleStatus` is null and nothing is stored. Like the host,
  devhost needs a storage connection (`AzureWebJobsStorage`) for a timer function.
- **Not simulated**: the listener's singleton lock across instances (`[Singleton(Mode = Listener)]`,
  a blob lease): two devhosts of one app on one storage account each run the schedule, so a timer
  function runs more often than on Azure, never less.
- **A failed run** is logged and the schedule continues (`HandleTimerEvent` catches everything);
  timer triggers are not retried.
- **Binding data** (what the worker's `TimerRequestConverter` decodes, azure-functions `timer.py`:
  `data.type` must be `json`, keys `IsPastDue`, `ScheduleStatus`, `Schedule`): `TimerInfo` serialized
  as the host does, `{"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {...} | null,
  "IsPastDue": false}`; trigger metadata `TimerTrigger` (the binding data contract of
  `TimerTriggerBinding`: the fire time as text).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from devhost import protocol
from devhost.config import resolve_binding_expression
from devhost.invoke import FunctionFailed, Invoker, log_invocation
from devhost.loader import FunctionInfo
from devhost.ncrontab import Schedule, parse
from devhost.timer_status import ScheduleStatus, StorageScheduleMonitor, timer_name

log = logging.getLogger("devhost")


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def timer_info(status: dict[str, str] | None, *, past_due: bool = False) -> str:
    """The TimerInfo JSON the host sends the worker (module doc)."""
    return json.dumps({"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due})


class TimerTriggerListener:
    """Runs one timer-triggered function on its schedule, one invocation at a time."""

    def __init__(self, fn: FunctionInfo, invoker: Invoker, monitor: StorageScheduleMonitor | None, *,
                 clock: Any = None) -> None:
        self.fn = fn
        self.invoker = invoker
        self.expression = resolve_binding_expression(str(fn.trigger["schedule"]))
        self.schedule: Schedule = parse(self.expression)  # InvalidSchedule fails the host's start
        self.run_on_startup = _flag(fn.trigger.get("runOnStartup"), False)
        self._clock = clock or _now
        now = self._clock()
        self.use_monitor = _flag(fn.trigger.get("useMonitor"),
                                 self.schedule.occurrences_in(now, timedelta(minutes=1)) <= 1)
        self.monitor = monitor if self.use_monitor else None
        self.timer = timer_name(fn.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timer-{fn.name}", daemon=True)
        self.status = ScheduleStatus(None, self.schedule.next_after(now), None)
        self.past_due = False
        self.runs = 0

    @property
    def next(self) -> datetime | None:
        return self.status.next

    def start(self) -> None:
        """`TimerListener.StartAsync`: read the stored status, check past due, then schedule."""
        if self.monitor is not None:
            now = self._clock()
            self.past_due, self.status = self.monitor.check_past_due(self.timer, now, self.schedule,
                                                                     self.monitor.get(self.timer))
        self._thread.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop scheduling; an invocation already running is waited for (up to `grace` seconds)."""
        self._stop.set()
        self._thread.join(grace)

    def _run(self) -> None:
        if self.past_due and not self._stop.is_set():
            self._fire(self._clock(), scheduled=None, past_due=True)
        elif self.run_on_startup and not self._stop.is_set():
            self._fire(self._clock(), scheduled=None)
        while not self._stop.is_set() and self.status.next is not None:
            wait = (self.status.next - self._clock()).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                return
            self._fire(self._clock(), scheduled=self.status.next)

    def _fire(self, at: datetime, scheduled: datetime | None, past_due: bool = False) -> None:
        """One invocation, then the next occurrence from max(at, the occurrence served), stored."""
        started = time.perf_counter()
        sent = self.status.to_json() if self.use_monitor else None
        trigger = protocol.TypedData(json=timer_info(sent, past_due=past_due))
        meta = {"TimerTrigger": protocol.TypedData(string=at.astimezone(UTC).strftime("%m/%d/%Y %H:%M:%S"))}
        try:
            self.invoker.invoke(self.fn, trigger, trigger_metadata=meta)
            outcome = "ok"
        except FunctionFailed as exc:
            log.error("timer function %s failed: %s\n%s", self.fn.name, exc.message, exc.stack_trace)
            outcome = "error (the schedule continues)"
        except Exception as exc:  # the host catches everything here: the schedule must not stop
            log.error("timer function %s could not run: %r", self.fn.name, exc)
            outcome = "error (the schedule continues)"
        self.runs += 1
        kind = " (past due)" if past_due else ""
        log_invocation(self.fn.name, f"timer {self.expression}{kind}", outcome, (time.perf_counter() - started) * 1000.0)
        adjusted = scheduled if scheduled is not None and scheduled > at else at
        self.status = ScheduleStatus(adjusted, self.schedule.next_after(adjusted), adjusted)
        if self.monitor is not None:
            self.monitor.update(self.timer, self.status)


def _now() -> datetime:
    return datetime.now(UTC)
