"""The alert sweeper's timer trigger (thin): every minute, `alerts.sweeper.sweep` on the app's clients.

NCRONTAB with seconds (`{second} {minute} {hour} {day} {month} {day-of-week}`), as the Functions
timer trigger requires: `0 * * * * *` fires at second 0 of every minute. The host runs a timer
function on one instance at a time (the timers extension's listener is a singleton) and never
retries one; a run that fails is simply followed by the next. `runOnStartup` stays false (its
default): on Azure a scale-out or restart would otherwise sweep at once on every new instance.
devhost runs timer triggers the same way (devhost/timers.py, docs/devhost.md).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func

from alerts import notify, sweeper
from core.runtime import runtime
from proxy.approvals import ChargeApprovals
from proxy.store import LedgerStore

SCHEDULE = "0 * * * * *"  # every minute, at second 0
bp = func.Blueprint()
log = logging.getLogger("spendgate.alerts")


@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE)
def sweep_alerts(timer: func.TimerRequest) -> None:
    rt = runtime()
    report = sweeper.sweep(notify.outbox(), LedgerStore(rt.tables, rt.settings), ChargeApprovals(rt.tables, rt.settings),
                           datetime.now(UTC), rt.settings.alert_sweep_grace)
    log.info("alert sweep%s: %s", " (past due)" if timer.past_due else "", report)
