"""The app's alerts, raised where things happen: one function per kind, on the process's outbox.

Callers (routes, activities, the proxy) call these after the fact they report has been committed;
each never raises (`AlertOutbox.publish`), so an alert can never undo or delay what it reports.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from alerts.model import Alert, now_iso
from alerts.outbox import AlertOutbox, queue_service
from core.runtime import runtime

_outbox: tuple[object, AlertOutbox] | None = None
_lock = threading.Lock()
# Threshold alerts are decided by the ledger's leader inside a batch of charges: it hands them to
# this pool so that recording and queueing them never holds up the charges waiting in that batch.
_background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alerts")


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


def run_approval_requested(instance_id: str, budget_cents: int, expires_at: str) -> None:
    outbox().publish(Alert(
        "approval_requested", f"billing run {instance_id} ({_usd(budget_cents)}) waits for approval until {expires_at}",
        now_iso(), run_id=instance_id, cap_cents=budget_cents,
    ))


def charge_approval_requested(approval_id: str, key_id: str, label: str, amount_cents: int, expires_at: str) -> None:
    outbox().publish(Alert(
        "approval_requested", f"a charge of {_usd(amount_cents)} on key {key_id} ({label}) waits for approval "
        f"{approval_id} until {expires_at}", now_iso(), key_id=key_id, label=label, approval_id=approval_id,
        amount_cents=amount_cents,
    ))


def run_stopped_by_cap(instance_id: str, key_id: str | None, spent_cents: int, cap_cents: int) -> None:
    outbox().publish(Alert(
        "run_stopped_by_cap", f"billing run {instance_id} stopped: its budget of {_usd(cap_cents)} is spent "
        f"({_usd(spent_cents)} charged)", now_iso(), run_id=instance_id, key_id=key_id, spent_cents=spent_cents,
        cap_cents=cap_cents,
    ))


def key_revoked(key_id: str, label: str) -> None:
    outbox().publish(Alert("key_revoked", f"vault key {key_id} ({label}) was revoked", now_iso(), key_id=key_id,
                           label=label))


def threshold_crossed(key_id: str, label: str, window: str, cap_cents: int, used_cents: int,
                      percents: list[int]) -> None:
    """The ledger committed these thresholds as fired (proxy/alert_bands.py); publish them off its thread."""
    def publish() -> None:
        for p in percents:
            outbox().publish(Alert(
                "spend_threshold", f"vault key {key_id} ({label}) reached {p} % of its "
                f"{'lifetime' if window == 'lifetime' else 'daily'} cap of {_usd(cap_cents)} "
                f"({_usd(used_cents)} spent or reserved, window {window})", now_iso(), key_id=key_id, label=label,
                threshold_percent=p, window=window, cap_cents=cap_cents, spent_cents=used_cents,
            ), row_key=f"threshold-{window}-{p:03d}")
    _background.submit(publish)
