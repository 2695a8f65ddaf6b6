"""Payment intents that are not finished: their reservation is held, not settled.

A payment intent answered 2xx can still be unfinished: ``requires_action`` (3-D Secure: the
customer may complete it outside the proxy, with the intent's client_secret),
``requires_payment_method`` (it may be confirmed again with another card, also outside the
proxy) or ``processing`` (the money is on its way, or not). Settling such an answer as spent
would be wrong if it never completes; releasing it would be wrong if it does. So the record
completes (a retry replays the answer) but its amount stays **pending**, the record marked
``held``, until the intent resolves:

    succeeded, requires_capture  → settled (reconcile sees it)
    canceled                     → released (reconcile sees it, or at once after a successful
                                   ``POST /v1/payment_intents/*/cancel`` through the proxy)
    another confirm through the proxy succeeds → the earlier hold on that intent is released
                                   (the new reservation is settled instead; an intent is paid once)

Holds are per key: a cancel or confirm by one key never releases another key's hold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from core.errors import SpendgateError
from proxy.store import Conflict, IdemRecord, KeyRecord, op_replace_idem

log = logging.getLogger("spendgate.proxy")
HELD = ("requires_action", "requires_payment_method", "processing", "requires_confirmation")
PAID = ("succeeded", "requires_capture")
GONE = ("canceled",)


def intent_status(path: str, body: str | None) -> str | None:
    """The status of the payment intent in a 2xx answer to a payment-intent request, else None."""
    if not path.startswith("/v1/payment_intents") or not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("object") != "payment_intent":
        return None
    status = doc.get("status")
    return status if isinstance(status, str) else None


def is_held(record: IdemRecord, body: str | None) -> bool:
    """Does this metered payment-intent answer leave the money undecided?"""
    return record.amount_cents > 0 and intent_status(record.path, body) in HELD


def resolve_hold(deps: Any, key: KeyRecord, record: IdemRecord, status: str | None) -> str:
    """Settle or release one held record for the intent's current `status`; "pending" if unresolved."""
    if status in PAID:
        action = "settle"
    elif status in GONE:
        action = "release"
    else:
        return "pending"
    done = replace(record, held=False)
    for attempt in range(60):
        try:
            move = deps.ledger.settle if action == "settle" else deps.ledger.release
            move(key, record.amount_cents, record.reserve_day, [op_replace_idem(done)])
            return "settled" if action == "settle" else "released"
        except Conflict:
            deps.backoff(attempt)
            fresh, current = deps.store.read_key_and_idem(key.key_id, record.row_key)
            if fresh is None or current is None or not current.held:
                return "pending"  # someone else resolved it
            key, record, done = fresh, current, replace(current, held=False)
    raise SpendgateError("governance_unavailable", "The spend ledger is too contended right now.")


def release_holds(deps: Any, key: KeyRecord, intent_id: str, *, keep_row: str | None = None) -> None:
    """Release the key's held reservations on `intent_id` (a cancel succeeded, or another
    reservation on it settled). Never fails the caller: a hold left behind is too cautious
    only, and reconcile resolves it."""
    try:
        for record in deps.store.held_records(key.key_id, intent_id):
            if record.row_key != keep_row:
                resolve_hold(deps, deps.store.read_key(key.key_id) or key, record, "canceled")
    except (SpendgateError, Conflict):
        log.warning("could not release held reservations of key_id=%s on %s", key.key_id, intent_id)
