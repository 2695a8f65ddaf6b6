"""The alert sweeper: deliver what a crash or a failed send left behind, and keep the approvals listing tidy.

Run by the `sweep_alerts` timer trigger (alerts/timer.py, every minute); every step is idempotent,
so a run cut short is finished by the next one, and two runs at once (the host runs a timer
function once at a time across instances; a long run overlapping is still harmless) record nothing
twice, because every alert has one fixed row (alerts/outbox.py).

1. **Thresholds without an alert row.** The ledger commits a threshold into the key row's
   `alerts_fired` (proxy/alert_bands.py) and records the alert right after, off its thread; a
   process that dies in between leaves the marker without its row. For every key in the `_keys`
   index (written when a key is issued, off the charge path), one point read of its key row: when
   `alerts_fired` differs from what the index last found complete (`checked`), each fired
   percent without a row is published as the normal path would have (usage and time from the
   marker's `alerts_usage`, else the threshold itself), once the marker is older than the grace.
   Keys are dropped from the index an hour after they expired or were revoked, once checked.
   No scan of the ledger table, no write to a key row.
2. **Held charges without an alert row** (a crash between the approval row and its alert): the
   pending index of the approvals table (proxy/approval_index.py) is one query; each approval
   older than the grace and not yet seen `alerted` gets its `approval_requested` alert.
3. **Unpublished alerts**: every `_outbox` row older than the grace is finished (`AlertOutbox.finish`:
   row created if missing, queue sends, marked published). A *staged* one (written before its fact:
   a revoke, a run's start) is finished only once the fact is verified — the key row carries
   `revoked_at`; the Durable client knows the run (`started_runs`, looked up by the trigger) — and
   dropped if it still is not after `STAGED_TIMEOUT` (the revoke or the start failed).
4. **The approvals listing**: `ChargeApprovals.sweep` (moves decided and expired approvals out of
   the pending index, drops orphans, deletes decisions past the retention).

The grace (`SPENDGATE_ALERT_SWEEP_GRACE_SECONDS`, default 60) keeps the sweeper off alerts whose
normal path is still running; racing it would still record one row (creates of a fixed RowKey),
only a message could be sent twice — which at-least-once delivery allows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from alerts.notify import approval_row, charge_approval_alert, threshold_alert, threshold_row
from alerts.outbox import AlertOutbox
from proxy import alert_bands
from proxy.approvals import ChargeApprovals
from proxy.store import KEY_ROW, LedgerStore, key_from_entity

log = logging.getLogger("spendgate.alerts")
RETIRE_AFTER = timedelta(hours=1)  # a key stops being watched this long after it expired or was revoked
STAGED_TIMEOUT = timedelta(minutes=10)  # a staged alert whose fact is still not there by then never happened


@dataclass
class SweepReport:
    """What one sweep did (logged by the trigger, asserted by tests)."""

    keys_read: int = 0
    thresholds: int = 0
    approvals: int = 0
    finished: int = 0
    dropped: int = 0
    listing: dict[str, int] = field(default_factory=dict)
    errors: int = 0


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def staged_runs(outbox: AlertOutbox) -> list[str]:
    """Runs whose staged `approval_requested` alert waits for proof that the run started."""
    alerts = [json.loads(r["alert"]) for r in outbox.pending() if r.get("staged")]
    return [str(a["run_id"]) for a in alerts if a.get("run_id") and a.get("type") == "approval_requested"]


def sweep(outbox: AlertOutbox, store: LedgerStore, approvals: ChargeApprovals, now: datetime,
          grace: timedelta, started_runs: set[str] | None = None) -> SweepReport:
    """One pass of steps 1-4 (module doc); a failing step is logged and the others still run.
    `started_runs`: of `staged_runs`, those the Durable client knows (None: not looked up)."""
    report = SweepReport()
    for step in (_thresholds, _held_charges, partial(_outboxed, started_runs=started_runs)):
        try:
            step(report, outbox, store, approvals, now, grace)
        except Exception:  # a storage hiccup: the next run (a minute later) does it again
            report.errors += 1
            log.exception("alert sweep step %s failed", getattr(step, "__name__", step))
    try:
        report.listing = approvals.sweep(now, grace)
    except Exception:
        report.errors += 1
        log.exception("approvals listing upkeep failed")
    return report


def _thresholds(report: SweepReport, outbox: AlertOutbox, store: LedgerStore, _a: ChargeApprovals, now: datetime,
                grace: timedelta) -> None:
    for watched in outbox.watched_keys():
        key_id = str(watched["RowKey"])
        try:
            entity = store.read_row(key_id, KEY_ROW)
            report.keys_read += 1
            if entity is None:  # its issue failed after indexing it: forget it once it would have expired
                if now > _dt(watched["expires_at"]) + RETIRE_AFTER:
                    outbox.unwatch(key_id)
                continue
            marker = str(entity.get("alerts_fired") or "")
            complete = marker == (watched.get("checked") or "")
            if not complete:
                complete = _record_fired(report, outbox, entity, marker, now, grace)
                if complete:
                    outbox.mark_checked(key_id, marker)
            key = key_from_entity(entity)
            ended = key.revoked_at or key.expires_at
            if complete and ended is not None and now > ended + RETIRE_AFTER:
                outbox.unwatch(key_id)
        except Exception:
            report.errors += 1
            log.exception("threshold sweep of key_id=%s failed", key_id)


def _record_fired(report: SweepReport, outbox: AlertOutbox, entity: Any, marker: str, now: datetime,
                  grace: timedelta) -> bool:
    """Publish each fired threshold of `marker` that has no row; True when every one has a row now."""
    window, _, tail = marker.partition(":")
    percents = [int(p) for p in tail.split(",") if p.isdigit()]
    key = key_from_entity(entity)
    note = alert_bands.read_usage_note(entity.get("alerts_usage"))
    noted = note.get("window") == window and isinstance(note.get("percents"), list)
    cap = key.total_cap_cents if window == "lifetime" and key.total_cap_cents is not None else key.daily_cap_cents
    complete = True
    for p in percents:
        row = threshold_row(window, p)
        if outbox.exists(key.key_id, row):
            continue
        if noted and p in note["percents"]:  # type: ignore[operator]
            used, at = int(note.get("used") or 0), str(note.get("at"))  # type: ignore[call-overload]
            if now - _dt(at) < grace:
                complete = False  # its normal path may still be recording it
                continue
        else:  # fired in an earlier commit whose note was overwritten: the threshold is what was crossed
            used, at = cap * p // 100, now.isoformat().replace("+00:00", "Z")
        outbox.publish(threshold_alert(key.key_id, key.label, window, cap, used, p, at), row)
        report.thresholds += 1
        complete = complete and outbox.exists(key.key_id, row)
        log.warning("alert sweep: threshold %s %% of key_id=%s (window %s) had no alert row; published", p,
                    key.key_id, window)
    return complete


def _held_charges(report: SweepReport, outbox: AlertOutbox, _s: LedgerStore, approvals: ChargeApprovals,
                  now: datetime, grace: timedelta) -> None:
    index = approvals.index
    for row in index.pending_rows():
        if row.get("alerted") or now - _dt(row["created_at"]) < grace:
            continue
        if not outbox.exists(row["key_id"], approval_row(row["RowKey"])):
            outbox.publish(charge_approval_alert(row["RowKey"], row["key_id"], row["label"], int(row["amount_cents"]),
                                                 row["expires_at"], row["created_at"]), approval_row(row["RowKey"]))
            report.approvals += 1
        if outbox.exists(row["key_id"], approval_row(row["RowKey"])):
            index.mark_alerted(row["RowKey"])


def _outboxed(report: SweepReport, outbox: AlertOutbox, store: LedgerStore, _a: ChargeApprovals, now: datetime,
              grace: timedelta, started_runs: set[str] | None = None) -> None:
    for row in outbox.pending():
        age = now - _dt(row["created_at"])
        if age < grace:
            continue
        if row.get("staged"):
            happened = _happened(json.loads(row["alert"]), store, started_runs)
            if happened is None:
                continue  # cannot tell now: the next run looks again
            if not happened:
                if age > STAGED_TIMEOUT:
                    outbox.drop(row)
                    report.dropped += 1
                continue
        if outbox.finish(row):
            report.finished += 1


def _happened(alert: dict[str, Any], store: LedgerStore, started_runs: set[str] | None) -> bool | None:
    """Did the fact a staged alert announced happen? (None: unknown.)"""
    if alert.get("type") == "key_revoked":
        entity = store.read_row(str(alert["key_id"]), KEY_ROW)
        return bool(entity is not None and entity.get("revoked_at"))
    if alert.get("type") == "approval_requested" and alert.get("run_id"):
        return None if started_runs is None else str(alert["run_id"]) in started_runs
    return True
