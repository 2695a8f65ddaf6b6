"""devhost's timer test app: a timer trigger that records each run, a slow one, and an HTTP function.

The schedule comes from an app setting (`%TICK_SCHEDULE%`), as the real host resolves it. Every run
appends the `TimerRequest` the worker built (past_due, schedule_status, schedule) and its start and end
times to the file named by TIMER_LOG; the slow timer sleeps SLOW_SECONDS, so tests can see that runs of
one function never overlap. `yearly` is monitored: a status blob saying its last New Year was missed
makes it run once at start, past due.
"""

from __future__ import annotations

import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _record(name: str, timer: func.TimerRequest, started: float) -> None:
    row = {"fn": name, "past_due": timer.past_due, "schedule_status": timer.schedule_status,
           "schedule": timer.schedule, "started": started, "ended": time.time()}
    with open(os.environ["TIMER_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(row) + "\n")


@app.timer_trigger(arg_name="timer", schedule="%TICK_SCHEDULE%")
def tick(timer: func.TimerRequest) -> None:
    _record("tick", timer, time.time())


@app.timer_trigger(arg_name="timer", schedule="* * * * * *", run_on_startup=True)
def slow(timer: func.TimerRequest) -> None:
    started = time.time()
    time.sleep(float(os.environ.get("SLOW_SECONDS", "1.5")))
    _record("slow", timer, started)


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
def yearly(timer: func.TimerRequest) -> None:
    """Monitored (once a year): its status lives in blob storage, so a missed New Year runs at start."""
    _record("yearly", timer, time.time())


@app.route(route="ping", methods=["GET"])
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")
