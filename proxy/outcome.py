"""The end of a forward: settle, release or keep the reservation; answer or replay.

`outcome_ops` is the one rule for what an answer from Stripe does to the reservation
(docs/proxy.md, "The ledger protocol"); `finish` commits it with the record and the audit
row in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from core.errors import SpendgateError
from proxy.audit import AuditDraft
from proxy.deps import ProxyDeps, ProxyResponse
from proxy.holds import GONE, intent_status, is_held, release_holds
from proxy.store import Conflict, IdemRecord, KeyRecord, Operation, op_create_audit, op_delete_idem, op_replace_idem
from proxy.upstream import Upstream

log = logging.getLogger("spendgate.proxy")
MAX_ATTEMPTS = 60


def outcome_ops(record: IdemRecord, upstream: Upstream) -> tuple[str, Operation]:
    """What to do with the reservation ("settle"/"release"/"keep") and the record.

    Released only when Stripe surely moved nothing: the request never left (connect
    failed), a 429, or a definite 4xx. A 409 (``idempotency_key_in_use``: an earlier send
    with this key is still running at Stripe and may yet succeed) keeps the reservation,
    like a timeout or a 5xx: the record turns ambiguous and a retry looks the object up.
    A 2xx payment intent that is not finished (``requires_action``, ``processing``, …)
    completes the record but keeps the reservation, held (proxy/holds.py)."""
    if upstream.outcome == "not_sent" or (upstream.outcome == "response" and upstream.status == 429):
        return "release", op_delete_idem(record)  # Stripe saved nothing; a retry starts afresh
    if upstream.outcome == "ambiguous" or upstream.status == 409:
        return "keep", op_replace_idem(replace(record, state="ambiguous", status_code=upstream.status))
    done = replace(record, state="completed", status_code=upstream.status, body=upstream.body,
                   content_type=upstream.content_type, object_id=upstream.object_id)
    if not 200 <= (upstream.status or 0) < 300:
        return "release", op_replace_idem(done)
    if is_held(record, upstream.body):
        return "keep", op_replace_idem(replace(done, held=True))
    return "settle", op_replace_idem(done)


def finish(
    deps: ProxyDeps, draft: AuditDraft, key: KeyRecord, record: IdemRecord, upstream: Upstream, now: datetime,
    *, replayed: bool,
) -> ProxyResponse:
    action, record_op = outcome_ops(record, upstream)
    row = draft.row("replayed" if replayed else "forwarded", upstream.status, upstream.object_id)
    ops = [record_op, op_create_audit(row)]
    committed = False
    for attempt in range(MAX_ATTEMPTS):
        try:
            if record.amount_cents > 0 and action == "settle":
                deps.ledger.settle(key, record.amount_cents, record.reserve_day, ops)
            elif record.amount_cents > 0 and action == "release":
                deps.ledger.release(key, record.amount_cents, record.reserve_day, ops)
            else:
                deps.store.submit(ops)
            committed = True
            break
        except Conflict:
            deps.backoff(attempt)
            fresh, current = deps.store.read_key_and_idem(key.key_id, record.row_key)
            if fresh is None or current is None or current.etag != record.etag:
                # Our lease ran out and another request took the record over: it owns the outcome now.
                deps.store.insert_audit(row)
                break
            key = fresh
        except SpendgateError:
            # The ledger is unreachable: the record stays in_flight and its reservation pending
            # (never too generous); a retry after the lease, or reconcile, resolves it.
            log.error("could not record the outcome of request_id=%s key_id=%s", draft.request_id, key.key_id)
            break
    intent = upstream.object_id
    if committed and intent and record.path.startswith("/v1/payment_intents"):
        # An intent is paid once: a reservation on it that settled replaces this key's earlier
        # holds on it; a successful cancel ends them.
        if action == "settle" and record.kind in ("intent", "capture"):  # creates have no earlier holds
            release_holds(deps, key, intent, keep_row=record.row_key)
        elif record.kind == "release" and intent_status(record.path, upstream.body) in GONE:
            release_holds(deps, key, intent)
    response = respond(upstream, draft.request_id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def respond(upstream: Upstream, request_id: str) -> ProxyResponse:
    if upstream.status is None:
        err = SpendgateError("upstream_unavailable", "Stripe could not be reached or did not answer; retry with the same Idempotency-Key.")
        return ProxyResponse(err.status, err.to_json().encode(), {**err.headers(), "Request-Id": request_id})
    headers = {"Content-Type": upstream.content_type or "application/json", "Request-Id": request_id}
    if upstream.status >= 500 or upstream.status in (409, 429):
        headers["Stripe-Should-Retry"] = "true"
    elif upstream.status >= 400:
        headers["Stripe-Should-Retry"] = "false"
    return ProxyResponse(upstream.status, upstream.body.encode(), headers)


def replay(deps: ProxyDeps, draft: AuditDraft, record: IdemRecord) -> ProxyResponse:
    """Answer with a completed request's stored status and body (audited as "replayed")."""
    deps.store.insert_audit(draft.row("replayed", record.status_code, record.object_id))
    headers = {"Content-Type": record.content_type or "application/json", "Request-Id": draft.request_id,
               "Idempotent-Replayed": "true"}
    if (record.status_code or 200) >= 400:
        headers["Stripe-Should-Retry"] = "false"
    return ProxyResponse(record.status_code or 200, (record.body or "").encode(), headers)
