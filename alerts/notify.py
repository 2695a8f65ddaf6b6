"""The app's alerts, raised where things happen: one function per kind, on the process's outbox.

Callers (routes, activities, the proxy) call these after the fact they report has been committed;
each never raises (`AlertOutbox.publish`), so an alert can never undo or delay what it reports.
Every alert has a fixed row and a stable id per fact (`*_alert` builders, also used by the sweeper,
alerts/sweeper.py), so a retry of the caller, or the sweeper finishing what a crash left, records it once.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from alerts.model import Alert, now_iso, stable_id
from alerts.outbox import AlertOutbox, queue_service
from core.runtime import runtime

_outbox: tuple[object, AlertOutbox] | None = None
_lock = threading.Lock()
# Threshold alerts are decided by the ledger's leader inside a batch of charges: it hands them to
# this pool so that recording and queueing them never holds up the charges waiting in that batch.
_background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alerts")
log = logging.getLogger("spendgate.alerts")


def outbox() -> AlertOutbox:
    """The process's outbox for the current settings (rebuilt when they change, as `runtime()` is)."""
    global _outbox
    rt = runtime()
    with _lock:
        if _outbox is None or _outbox[0] is not rt:
            _outbox = (rt, AlertOutbox(rt.tables, queue_service(rt.settings), rt.settings))
        return _outbox[1]


def _usd(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def threshold_row(window: str, percent: int) -> str:
    return f"threshold-{window}-{percent:03d}"


def threshold_alert(key_id: str, label: str, window: str, cap_cents: int, used_cents: int, percent: int,
                    created_at: str) -> Alert:
    return Alert(
        "spend_threshold", f"vault key {key_id} ({label}) reached {percent} % of its "
        f"{'lifetime' if window == 'lifetime' else 'daily'} cap of {_usd(cap_cents)} "
        f"({_usd(used_cents)} spent or reserved, window {window})", created_at,
        id=stable_id("spend_threshold", key_id, window, str(percent)), key_id=key_id, label=label,
        threshold_percent=percent, window=window, cap_cents=cap_cents, spent_cents=used_cents,
    )


def charge_approval_alert(approval_id: str, key_id: str, label: str, amount_cents: int, expires_at: str,
                          created_at: str) -> Alert:
    return Alert(
        "approval_requested", f"a charge of {_usd(amount_cents)} on key {key_id} ({label}) waits for approval "
        f"{approval_id} until {expires_at}", created_at, id=stable_id("approval_requested", approval_id),
        key_id=key_id, label=label, approval_id=approval_id, amount_cents=amount_cents,
    )


def approval_row(approval_id: str) -> str:
    return f"approval-{approval_id}"


RUN_APPROVAL_ROW = "run-approval"
REVOKED_ROW = "revoked"


def _run_approval_alert(instance_id: str, budget_cents: int, expires_at: str) -> Alert:
    return Alert(
        "approval_requested", f"billing run {instance_id} ({_usd(budget_cents)}) waits for approval until {expires_at}",
        now_iso(), id=stable_id("approval_requested", "run", instance_id), run_id=instance_id, cap_cents=budget_cents,
    )


def run_approval_staged(instance_id: str, budget_cents: int, expires_at: str) -> None:
    """Before the run starts: the sweeper publishes it if this process dies before `run_approval_requested`."""
    outbox().stage(_run_approval_alert(instance_id, budget_cents, expires_at), RUN_APPROVAL_ROW)


def run_approval_requested(instance_id: str, budget_cents: int, expires_at: str) -> None:
    outbox().publish(_run_approval_alert(instance_id, budget_cents, expires_at), RUN_APPROVAL_ROW)


def charge_approval_requested(approval_id: str, key_id: str, label: str, amount_cents: int, expires_at: str) -> None:
    outbox().publish(charge_approval_alert(approval_id, key_id, label, amount_cents, expires_at, now_iso()),
                     approval_row(approval_id))


def run_stopped_by_cap(instance_id: str, key_id: str | None, spent_cents: int, cap_cents: int) -> None:
    outbox().publish(Alert(
        "run_stopped_by_cap", f"billing run {instance_id} stopped: its budget of {_usd(cap_cents)} is spent "
        f"({_usd(spent_cents)} charged)", now_iso(), id=stable_id("run_stopped_by_cap", instance_id),
        run_id=instance_id, key_id=key_id, spent_cents=spent_cents, cap_cents=cap_cents,
    ), "run-stopped-by-cap")


def _revoked_alert(key_id: str, label: str) -> Alert:
    return Alert("key_revoked", f"vault key {key_id} ({label}) was revoked", now_iso(),
                 id=stable_id("key_revoked", key_id), key_id=key_id, label=label)


def key_revoking(key_id: str, label: str) -> None:
    """Before the revoke: the sweeper publishes it if this process dies before `key_revoked`."""
    outbox().stage(_revoked_alert(key_id, label), REVOKED_ROW)


def key_revoked(key_id: str, label: str) -> None:
    outbox().publish(_revoked_alert(key_id, label), REVOKED_ROW)


def watch_key(key_id: str, expires_at: datetime) -> None:
    """Index a key being issued for the sweeper (before the key row exists: a key is never unwatched)."""
    outbox().watch_key(key_id, expires_at)


def threshold_crossed(key_id: str, label: str, window: str, cap_cents: int, used_cents: int,
                      percents: list[int]) -> None:
    """The ledger committed these thresholds as fired (proxy/alert_bands.py); publish them off its thread."""
    if runtime().settings.alert_fault == "crash":  # tests: the process dies between the ledger commit and the row
        log.error("SPENDGATE_ALERT_FAULT=crash: exiting after the threshold commit of key %s", key_id)
        os._exit(70)

    def publish() -> None:
        for p in percents:
            alert = threshold_alert(key_id, label, window, cap_cents, used_cents, p, now_iso())
            outbox().publish(alert, threshold_row(window, p))
    _background.submit(publish)
