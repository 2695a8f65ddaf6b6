"""The proxy pipeline: authenticate, validate, reserve, forward once, settle, audit.

`handle_proxy_request` is a plain function (the HTTP trigger in `proxy.routes` only
adapts to it), taking its storage, HTTP client, settings and clock as arguments:

1. Parse the vault key (Bearer or Basic user) and the request (method, safe /v1 path,
   printable-ASCII headers, the pinned Stripe-Version, depth-bounded form/JSON params,
   amount, currency, no caller-set marker); derive the idempotency key of a POST.
2. Read the key row (one point read; none for a charge on a key this process knows,
   proxy/known_keys.py). The idempotency record is learned from its create failing.
3. Authenticate (hash compare, revoked, expired), then the endpoint table and the key's
   allowlist, then the request's own validation errors and `expand[]`. A charge above the
   key's `approval_above_usd` stops here with 402 `approval_required` unless a person approved
   this very request (proxy/approvals.py).
4. POST: a confirm, capture or refund is priced from Stripe (proxy/pricing.py); a confirm or
   capture above `approval_above_usd` is then held as in 3 (a refund returns money: never). A
   completed record replays; an in-flight one answers 409; a different body answers
   idempotency_error; an ambiguous (or abandoned) one is taken over, looked up in Stripe
   (marker, or the intent's status) and settled, or forwarded again with the same key.
   Otherwise ONE transaction reserves the amount (If-Match on the key row) and creates
   the in_flight record. Only then is Stripe called, under a total deadline shorter than
   the record's lease.
5. ONE transaction settles/releases/keeps, completes the record and writes the audit row
   (proxy/outcome.py).

Denials are audited too (unauthenticated ones rate-limited and sampled, proxy/noise.py);
any storage failure before forwarding denies with a retryable 503 (fail closed).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
from azure.core.exceptions import AzureError

from core.deadline import within
from core.errors import SpendgateError
from proxy import idempotency as idem
from proxy.approvals import ApprovalHeld
from proxy.audit import AuditDraft
from proxy.deps import ProxyDeps, ProxyResponse, new_request_id, utcnow
from proxy.endpoints import readable_types
from proxy.keys import ParsedVaultKey, hash_secret, key_from_headers, parse_vault_key, secret_matches
from proxy.noise import source_of
from proxy.outcome import finish, outcome_ops, replay, respond
from proxy.policy import allowed_rule
from proxy.pricing import price
from proxy.store import Conflict, IdemRecord, KeyRecord, Operation, op_create_idem, op_replace_idem
from proxy.stripe_request import (
    PRICED_LATER,
    StripeRequest,
    build_request,
    check_expand,
    check_headers,
    check_method,
    check_stripe_version,
    forward_body,
    parse_params,
    parse_query,
    safe_path,
)
from proxy.upstream import LookupIncomplete, Upstream, find_created, send

__all__ = ["ProxyDeps", "ProxyResponse", "handle_proxy_request", "new_request_id", "outcome_ops", "utcnow"]
log = logging.getLogger("spendgate.proxy")
MAX_ATTEMPTS = 60
# Priced from Stripe, then held for approval like a charge priced from its body: a confirm or capture
# moves the money. A refund returns it and is never held (docs/approvals.md).
HELD_AFTER_PRICING = ("intent", "capture")
_DUMMY_HASH = hash_secret("not-a-secret")


def handle_proxy_request(
    deps: ProxyDeps, method: str, path: str | None, headers: Mapping[str, str], body: bytes,
    now: datetime | None = None, *, query: str = "", raw_path: str | None = None,
) -> ProxyResponse:
    """Govern one request bound for Stripe and answer it (never raises for client mistakes)."""
    now = now or utcnow()
    hdrs = {k.lower(): v for k, v in headers.items()}
    draft = AuditDraft(new_request_id(), now, (method or "").upper()[:10], "/" + (path or "").strip("/")[:300],
                       source=source_of(hdrs))
    try:
        return _handle(deps, draft, hdrs, path, body, now, query, raw_path)
    except SpendgateError as err:
        return _deny(deps, draft, err)


def _deny(deps: ProxyDeps, draft: AuditDraft, err: SpendgateError) -> ProxyResponse:
    audit = True
    if err.code == "vault_key_invalid" and not draft.key_id and deps.noise is not None:
        # Unauthenticated noise (proxy/noise.py): limited per source before anything is
        # written, and audited by sample.
        if not deps.noise.admit(draft.source):
            err = SpendgateError("rate_limited")
            audit = False
        else:
            skipped = deps.noise.sample(draft.source)
            audit = skipped is not None
            if skipped:
                log.warning("unauthenticated requests from source=%s not audited since its last row: %d",
                            draft.source, skipped)
    if audit:
        try:
            deps.store.insert_audit(draft.row(err.code))
        except (SpendgateError, Conflict):
            log.warning("audit write failed for request_id=%s", draft.request_id)
    return ProxyResponse(err.status, err.to_json().encode(), {**err.headers(), "Request-Id": draft.request_id})


def _authenticate(key: KeyRecord | None, parsed: ParsedVaultKey, draft: AuditDraft, now: datetime) -> KeyRecord:
    if key is None:
        secret_matches(parsed.secret, _DUMMY_HASH)  # same work as a real check
        raise SpendgateError("vault_key_invalid", "The vault key is unknown or wrong.")
    if not secret_matches(parsed.secret, key.secret_hash):
        raise SpendgateError("vault_key_invalid", "The vault key is unknown or wrong.")
    draft.key_id, draft.label = key.key_id, key.label
    status = key.status(now)
    if status == "revoked":
        raise SpendgateError("vault_key_revoked", "This vault key was revoked.")
    if status == "expired":
        raise SpendgateError("vault_key_expired", "This vault key has expired.")
    return key


def _replayable(record: IdemRecord | None, request: StripeRequest, now: datetime) -> bool:
    """A completed, still-kept record of this very request (same parameters)."""
    return (
        request.method == "POST" and record is not None and record.state == "completed"
        and idem.is_live(record, now) and record.fingerprint == request.fingerprint()
    )


def _handle(
    deps: ProxyDeps, draft: AuditDraft, hdrs: dict[str, str], path: str | None, body: bytes, now: datetime,
    query: str, raw_path: str | None,
) -> ProxyResponse:
    parsed = parse_vault_key(key_from_headers(hdrs))
    request: StripeRequest | None = None
    problem: SpendgateError | None = None
    caller_key: str | None = None
    version = deps.settings.stripe_version
    try:
        method = check_method(draft.method)
        draft.path = safe_path(path, raw_path)
        check_headers(hdrs)
        check_stripe_version(hdrs.get("stripe-version"), version)
        if method == "POST":
            if query:
                raise SpendgateError("body_invalid", "Send POST parameters in the body, not the query string.")
            params = parse_params(body, hdrs.get("content-type"))
            caller_key = idem.caller_key(hdrs.get("idempotency-key"))
        else:
            params = parse_query(query)
        request = build_request(method, draft.path, params)
        draft.amount, draft.currency = request.amount_cents, request.currency
    except SpendgateError as err:
        problem = err
    candidate = None
    if request is not None and request.method == "POST":
        candidate = caller_key or idem.derived_key(parsed.key_id, request)
    # The idempotency record is not read up front: a POST's reservation creates it in the
    # same transaction, and if one exists that create fails, nothing is reserved, and `_post`
    # reads the record and decides (replay, in use, different parameters, take over). A
    # charge priced from its own body authenticates against the key row this process last
    # read, if any: its reservation's If-Match is what stops it after a revoke
    # (proxy/known_keys.py). So the hot path of a charge reads nothing; everything else reads
    # the key row, including a confirm, capture or refund, whose pricing read reaches Stripe
    # before its reservation and so must not happen for a revoked key.
    metered = problem is None and request is not None and request.method == "POST" and (
        request.kind == "body" and request.metered_amount > 0)
    known = deps.known_keys.get(parsed.key_id) if metered and deps.known_keys is not None else None
    key = known or deps.read_key(parsed.key_id)
    try:
        key = _authenticate(key, parsed, draft, now)
    except SpendgateError as err:
        # The genuine holder of a revoked or expired key may still learn what an earlier,
        # completed request with its own Idempotency-Key did: a replay reaches nobody, so
        # "stop means stop" holds, and a retry after a revoke (a billing activity's) reports
        # the charge that happened instead of hiding it. Keys the proxy derived itself are
        # not replayed: without an explicit key, a request after a revoke is simply denied.
        if err.code in ("vault_key_revoked", "vault_key_expired") and problem is None and request is not None \
                and caller_key is not None \
                and _replayable(record := deps.store.read_idem(parsed.key_id, idem.idem_row(caller_key)), request, now):
            assert record is not None
            return replay(deps, draft, record)
        raise
    if problem is not None and problem.code in ("method_not_allowed", "path_invalid", "body_too_large"):
        raise problem
    rule = allowed_rule(key.allowed_endpoints, draft.method, draft.path)
    if rule is None:
        raise SpendgateError("endpoint_not_allowed", f"This key may not call {draft.method} {draft.path}.")
    if problem is not None:
        raise problem
    assert request is not None and key is not None
    check_expand(rule, request.params, readable_types(key.allowed_endpoints))
    if request.method != "POST":
        upstream = send(deps.stripe_http, deps.settings.stripe_secret_key, request.method, request.path,
                        params=request.params, stripe_version=version, deadline=deps.forward_seconds)
        row = draft.row("forwarded", upstream.status, upstream.object_id)
        deps.store.insert_audit(row)
        return respond(upstream, draft.request_id)
    if caller_key is None and not key.auto_idempotency:
        candidate = idem.random_key()
    draft.idempotency_key = candidate
    if request.kind == "body":
        _gate(deps, key, request, candidate, now)  # type: ignore[arg-type]
    return _post(deps, draft, key, request, candidate, now,  # type: ignore[arg-type]
                 key_is_known=known is not None, caller_key=caller_key is not None)


def _gate(deps: ProxyDeps, key: KeyRecord, request: StripeRequest, idem_key: str, now: datetime) -> None:
    """A charge above the key's `approval_above_usd` goes on only once a person approved this very
    request (proxy/approvals.py); otherwise 402 `approval_required` and nothing is reserved. At or
    below it (or without the setting, or without an approvals table) it goes on at once."""
    if key.approval_above_cents is None or request.metered_amount <= key.approval_above_cents \
            or deps.approvals is None:
        return
    customer = next((v for k, v in request.params if k == "customer"), None)
    try:
        deps.approvals.gate(key.key_id, key.label, request.method, request.path, request.fingerprint(),
                            request.metered_amount, customer, idem_key, now)
    except ApprovalHeld as held:
        if held.created and deps.on_approval_requested is not None:
            deps.on_approval_requested(held.approval)
        raise
    except AzureError as exc:  # fail closed: no approval could be read, nothing is forwarded
        raise SpendgateError("governance_unavailable") from exc


def _post(
    deps: ProxyDeps, draft: AuditDraft, key: KeyRecord, request: StripeRequest,
    idem_key: str, now: datetime, *, key_is_known: bool = False, caller_key: bool = False,
) -> ProxyResponse:
    """Reserve (creating the idempotency record), forward, settle; or answer from the record.

    The first attempt assumes a new request (no record read); later attempts read the key row
    and the record. `key_is_known`: `key` came from KnownKeys and may be stale (its counters
    and status are not to be trusted). A confirm, capture or refund is priced from Stripe
    first (proxy/pricing.py); if that fails, an earlier answer to the same request still wins."""
    record: IdemRecord | None = None
    priced: SpendgateError | None = None
    if request.kind in PRICED_LATER:
        try:
            with within(deps.forward_seconds):
                request = price(request, deps.stripe_http, deps.settings.stripe_secret_key, deps.settings.stripe_version)
            draft.amount, draft.currency = request.amount_cents, request.currency
        except SpendgateError as err:
            record = deps.store.read_idem(key.key_id, idem.idem_row(idem_key))
            if record is None or not idem.is_live(record, now):
                raise
            priced = err
    if priced is None and request.kind in HELD_AFTER_PRICING:
        _gate(deps, key, request, idem_key, now)  # a confirm or capture above the threshold waits like a charge
    amount, day = request.metered_amount, now.date().isoformat()
    parsed_key_id = key.key_id
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            deps.backoff(attempt)
            fresh = deps.read_key(parsed_key_id)
            record = deps.store.read_idem(parsed_key_id, idem.idem_row(idem_key))
            if fresh is None:
                raise SpendgateError("vault_key_invalid", "The vault key is unknown or wrong.")
            key = fresh
            status = key.status(max(now, utcnow()))  # the ledger judges expiry by the clock, not by `now`
            if status != "active":
                if caller_key and _replayable(record, request, now):  # as in `_handle` (a revoke it just met)
                    assert record is not None
                    return replay(deps, draft, record)
                raise SpendgateError(f"vault_key_{status}", f"This vault key is {status}.")
        if record is not None and idem.is_live(record, now):
            if record.fingerprint != request.fingerprint():
                raise SpendgateError(
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                    param="Idempotency-Key",
                )
            if record.state == "completed":
                return replay(deps, draft, record)
            if idem.in_use(record, now):
                raise SpendgateError("idempotency_key_in_use")
            started = time.monotonic()
            claimed = idem.taken_over(record, now, _lease(deps, now))
            try:
                etag = deps.store.submit([op_replace_idem(claimed)])[0]
            except Conflict:
                continue
            return _resolve(deps, draft, key, replace(claimed, etag=etag), request, now, started)
        if priced is not None:
            raise priced  # no earlier answer after all, and no amount to reserve
        started = time.monotonic()
        fresh_record = idem.new_record(key.key_id, idem_key, request, amount, day, now, _lease(deps, now), deps.retention)
        ops: list[Operation] = (
            [op_replace_idem(replace(fresh_record, etag=record.etag))] if record is not None else [op_create_idem(fresh_record)]
        )
        try:
            etag = deps.ledger.reserve(key, amount, day, ops)[1] if amount > 0 else deps.store.submit(ops)[0]
        except Conflict:
            continue  # the key row moved, or a record exists: the next attempt reads both
        except SpendgateError as err:
            # A refusal for the cap is final only when decided on the key row as storage has it
            # (a known row may be stale) and when there is no earlier answer to give: a retry
            # of a charge that filled the cap is replayed (or told it is in use), never refused.
            # The record is read again because it may have appeared since this attempt began
            # (the original request committing just before this one was decided).
            if err.code == "spend_cap_exceeded":
                if attempt == 0 and key_is_known:
                    continue
                now_record = deps.store.read_idem(key.key_id, idem.idem_row(idem_key))
                if now_record is not None and idem.is_live(now_record, now) and (
                    record is None or now_record.etag != record.etag
                ):
                    continue
            raise
        return _forward(deps, draft, key, replace(fresh_record, etag=etag), request, now, started)
    raise SpendgateError("governance_unavailable", "The spend ledger is too contended right now; nothing was forwarded.")


def _lease(deps: ProxyDeps, now: datetime) -> timedelta:
    """The lease, counted from `now` (the request's start) but covering from the real time at
    which the attempt starts: time spent before it (pricing, backoff) never shortens it."""
    return deps.lease + max(timedelta(0), utcnow() - now)


def _resolve(
    deps: ProxyDeps, draft: AuditDraft, key: KeyRecord, record: IdemRecord, request: StripeRequest, now: datetime,
    started: float,
) -> ProxyResponse:
    """A retry of an ambiguous request: if Stripe has the object, settle with it; else forward again.

    The lookup only reads and may outlast the lease; so before forwarding, the lease is
    renewed (If-Match on the record we claimed). If that fails, another request took the
    record over while we looked: it owns the outcome, and nothing is forwarded from here."""
    try:
        found = find_created(deps.stripe_http, deps.settings.stripe_secret_key, record, deps.settings.stripe_version,
                             deadline=deps.lookup_seconds)
    except (httpx.HTTPError, ValueError, LookupIncomplete):
        return finish(deps, draft, key, record, Upstream("ambiguous"), now, replayed=False)
    if found is not None:
        return finish(deps, draft, key, record, Upstream("response", 200, json.dumps(found)), now, replayed=True)
    if time.monotonic() - started > deps.forward_seconds:
        started = time.monotonic()
        renewed = replace(record, lease_until=now + _lease(deps, now))
        try:
            record = replace(renewed, etag=deps.store.submit([op_replace_idem(renewed)])[0])
        except Conflict:
            raise SpendgateError("idempotency_key_in_use") from None
    return _forward(deps, draft, key, record, request, now, started)


def _forward(
    deps: ProxyDeps, draft: AuditDraft, key: KeyRecord, record: IdemRecord, request: StripeRequest, now: datetime,
    started: float,
) -> ProxyResponse:
    """Send the request once, within the forward deadline, counted from when the lease began
    (`started`): a lease of 2T + 10 s taken at `started` outlives it by at least T + 10 s."""
    left = 2 * deps.forward_seconds - (time.monotonic() - started)
    left = min(deps.forward_seconds, left)
    if left <= 0:
        return finish(deps, draft, key, record, Upstream("ambiguous"), now, replayed=False)
    upstream = send(deps.stripe_http, deps.settings.stripe_secret_key, "POST", record.path,
                    body=forward_body(request.params, record.marker), idempotency_key=record.forwarded_key,
                    stripe_version=deps.settings.stripe_version, deadline=left)
    return finish(deps, draft, key, record, upstream, now, replayed=False)
