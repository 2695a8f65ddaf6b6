"""The alert sweeper's timer trigger (thin): every minute, `alerts.sweeper.sweep` on the app's clients.

NCRONTAB with seconds (`{second} {minute} {hour} {day} {month} {day-of-week}`), as the Functions
timer trigger requires: `0 * * * * *` fires at second 0 of every minute. The host runs a timer
function on one instance at a time (the timers extension's listener is a singleton) and never
retries one; a run that fails is simply followed by the next. `runOnStartup` stays false (its
default): on Azure a scale-out or restart would otherwise sweep at once on every new instance.
devhost runs timer triggers the same way (devhost/timers.py, docs/devhost.md).

The durable client binding answers one question: did the runs whose approval alert was staged
before their start actually start (`sweeper.staged_runs`)? The sweep itself is sync storage work,
run off the worker's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from alerts import notify, sweeper
from core.runtime import runtime
from proxy.approvals import ChargeApprovals
from proxy.store import LedgerStore

SCHEDULE = "0 * * * * *"  # every minute, at second 0
bp = df.Blueprint()
log = logging.getLogger("spendgate.alerts")


async def _started(client: df.DurableOrchestrationClient, instance_ids: list[str]) -> set[str]:
    started = set()
    for instance_id in instance_ids:
        status = await client.get_status(instance_id)
        if status is not None and getattr(status, "runtime_status", None) is not None:
            started.add(instance_id)
    return started


@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE)
@bp.durable_client_input(client_name="client")
async def sweep_alerts(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    rt = runtime()
    outbox = notify.outbox()
    started = await _started(client, await asyncio.to_thread(sweeper.staged_runs, outbox))
    report = await asyncio.to_thread(sweeper.sweep, outbox, LedgerStore(rt.tables, rt.settings),
                                     ChargeApprovals(rt.tables, rt.settings), datetime.now(UTC),
                                     rt.settings.alert_sweep_grace, started)
    log.info("alert sweep%s: %s", " (past due)" if timer.past_due else "", report)
