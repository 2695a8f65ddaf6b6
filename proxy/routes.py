"""HTTP triggers for the vault admin API and the Stripe proxy (thin: parse, call, shape).

Admin routes use function auth (`x-functions-key` / `?code=`), among them the held-charge
approvals (`GET /api/approvals`, paged Stripe-style, and `POST /api/approvals/{id}/approve|reject`;
docs/approvals.md);
`GET /api/billing/approvals/{id}` answers the vault key that asked. The proxy routes are
anonymous because the vault key in the request authenticates it. The proxy answers at
Stripe's own paths, `/v1/...` at the root of the host (host.json's route prefix is empty,
every other route says `api/` itself), and under `/api/stripe/v1/...`; both go through
one function, `_stripe`, into `handle_proxy_request`. `/v2/...` is refused there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from alerts import notify
from core.errors import SpendgateError
from core.runtime import runtime
from proxy.alert_bands import Binding
from proxy.approvals import Approval, ChargeApprovals, decider, view_for_key
from proxy.forward import ProxyDeps, handle_proxy_request, new_request_id
from proxy.keys import key_from_headers
from proxy.leases import LeaseLedger
from proxy.store import KeyRecord, LedgerStore
from proxy.vault import VaultService, vault_service

log = logging.getLogger("spendgate.proxy")
bp = func.Blueprint()
_FUNCTION = func.AuthLevel.FUNCTION


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json", headers=headers)


def _error(err: SpendgateError) -> func.HttpResponse:
    return func.HttpResponse(err.to_json(), status_code=err.status, headers=err.headers())


def _admin(call: Callable[[VaultService], Any], status: int = 200) -> func.HttpResponse:
    try:
        return _json(status, call(vault_service()))
    except SpendgateError as err:
        return _error(err)
    except Exception as exc:  # an unforeseen failure is not the caller's fault: retryable, no details
        log.exception("admin route failed: %s", type(exc).__name__)
        return _error(SpendgateError("governance_unavailable"))


def _int_param(req: func.HttpRequest, name: str, default: int) -> int:
    raw = req.params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise SpendgateError("policy_invalid", f"{name} must be a positive integer", param=name)
    return int(raw)


@bp.route(route="api/vault/keys", methods=["POST"], auth_level=_FUNCTION)
def vault_issue_key(req: func.HttpRequest) -> func.HttpResponse:
    try:
        body = json.loads(req.get_body() or b"null")
    except ValueError:
        return _error(SpendgateError("policy_invalid", "The body must be a JSON object.", param="body"))
    return _admin(lambda v: v.issue(body), 201)


@bp.route(route="api/vault/keys", methods=["GET"], auth_level=_FUNCTION)
def vault_list_keys(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.list(req.params.get("label"), _int_param(req, "limit", 100), req.params.get("continuation")))


@bp.route(route="api/vault/keys/{key_id}", methods=["GET"], auth_level=_FUNCTION)
def vault_describe_key(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.describe(req.route_params["key_id"]))


@bp.route(route="api/vault/keys/{key_id}", methods=["DELETE"], auth_level=_FUNCTION)
def vault_revoke_key(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.revoke(req.route_params["key_id"], on_revoked=notify.key_revoked,
                                     before_revoke=notify.key_revoking))


@bp.route(route="api/vault/keys/{key_id}/audit", methods=["GET"], auth_level=_FUNCTION)
def vault_key_audit(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.audit(req.route_params["key_id"], _int_param(req, "limit", 50), req.params.get("continuation")))


@bp.route(route="api/vault/keys/{key_id}/reconcile", methods=["POST"], auth_level=_FUNCTION)
def vault_reconcile_key(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.reconcile(req.route_params["key_id"]))


@bp.route(route="api/spend", methods=["GET"], auth_level=_FUNCTION)
def vault_spend(req: func.HttpRequest) -> func.HttpResponse:
    return _admin(lambda v: v.spend(req.params.get("label") or ""))


def _approval_alert(approval: Approval) -> None:
    notify.charge_approval_requested(approval.id, approval.key_id, approval.label, approval.amount_cents,
                                     approval.expires_at)


def _threshold_alert(key: KeyRecord, binding: Binding, percents: list[int]) -> None:
    notify.threshold_crossed(key.key_id, key.label, binding.window, binding.cap, binding.used, percents)


def _approvals() -> ChargeApprovals:
    rt = runtime()
    return ChargeApprovals(rt.tables, rt.settings)


@bp.route(route="api/approvals", methods=["GET"], auth_level=_FUNCTION)
def list_approvals(req: func.HttpRequest) -> func.HttpResponse:
    """Held charges (`?state=pending|approved|rejected|expired|all`, default pending), a page at a time
    (`limit` 1-100, default 20; `starting_after` an approval id; the answer says `has_more`)."""
    state = req.params.get("state", "pending")
    if state not in ("pending", "approved", "rejected", "expired", "all"):
        return _error(SpendgateError("policy_invalid", "state must be pending, approved, rejected, expired or all",
                                     param="state"))
    try:
        limit = _int_param(req, "limit", 20)
        if not 1 <= limit <= 100:
            raise SpendgateError("policy_invalid", "limit must be between 1 and 100", param="limit")
    except SpendgateError as err:
        return _error(err)
    now, after = datetime.now(UTC), req.params.get("starting_after") or None
    return _admin(lambda _v: _approvals().list(state, now, limit, after))


def _decide_approval(req: func.HttpRequest, decision: str) -> func.HttpResponse:
    try:
        body = json.loads(req.get_body() or b"null")
    except ValueError:
        return _error(SpendgateError("body_invalid", "the body must be JSON"))

    def decide(_v: VaultService) -> Any:
        who, reason = decider(dict(req.headers), body)
        return _approvals().decide(req.route_params["approval_id"], decision, who, reason, datetime.now(UTC))
    return _admin(decide)


@bp.route(route="api/approvals/{approval_id}/approve", methods=["POST"], auth_level=_FUNCTION)
def approve_charge(req: func.HttpRequest) -> func.HttpResponse:
    return _decide_approval(req, "approved")


@bp.route(route="api/approvals/{approval_id}/reject", methods=["POST"], auth_level=_FUNCTION)
def reject_charge(req: func.HttpRequest) -> func.HttpResponse:
    return _decide_approval(req, "rejected")


@bp.route(route="api/billing/approvals/{approval_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def approval_for_key(req: func.HttpRequest) -> func.HttpResponse:
    """The approval a vault key asked for, read with that key (the agent tools' `get_charge_status`)."""
    rt = runtime()
    store = LedgerStore(rt.tables, rt.settings)
    headers = {k.lower(): v for k, v in req.headers.items()}
    return _admin(lambda _v: view_for_key(_approvals(), store.read_key, key_from_headers(headers),
                                          req.route_params["approval_id"], datetime.now(UTC)))


def _proxy_error(err: SpendgateError) -> func.HttpResponse:
    """An error the proxy answers itself; it carries a Request-Id like every proxy answer."""
    headers = {**err.headers(), "Request-Id": new_request_id()}
    return func.HttpResponse(err.to_json(), status_code=err.status, headers=headers)


def _stripe(req: func.HttpRequest, path: str) -> func.HttpResponse:
    """Every request bound for Stripe, whichever route it came in on: one pipeline behind all of them."""
    url = urlsplit(req.url)
    if path.split("/", 1)[0].lower() == "v2":
        # Stripe's v2 API (JSON bodies, other idempotency and error shapes) is not governed yet:
        # refused before anything is read or forwarded, so nothing changes.
        return _proxy_error(SpendgateError("api_v2_not_supported", param="path"))
    try:
        rt = runtime()
        deps = ProxyDeps.build(rt.tables, rt.stripe_http, rt.settings)
        deps.on_approval_requested = _approval_alert
        if isinstance(deps.ledger, LeaseLedger):
            deps.ledger.on_threshold = _threshold_alert
        resp = handle_proxy_request(
            deps, req.method, path, dict(req.headers), req.get_body() or b"", query=url.query, raw_path=url.path,
        )
    except Exception as exc:  # fail closed, and never leak details
        log.exception("proxy failed: %s", type(exc).__name__)
        return _proxy_error(SpendgateError("governance_unavailable"))
    return func.HttpResponse(resp.body, status_code=resp.status, headers=resp.headers)


def _at_root(req: func.HttpRequest) -> str:
    """`v1/<rest>` as the request spelled its first segment (routing ignores case; the pipeline does not)."""
    first = urlsplit(req.url).path.lstrip("/").split("/", 1)[0]
    rest = req.route_params.get("path") or ""
    return f"{first}/{rest}" if rest else first


@bp.route(route="v1/{*path}", auth_level=func.AuthLevel.ANONYMOUS)
def stripe_api(req: func.HttpRequest) -> func.HttpResponse:
    """Stripe's own paths at the root of the host, so SDKs that take only host/port/protocol work (stripe-node)."""
    return _stripe(req, _at_root(req))


@bp.route(route="v2/{*path}", auth_level=func.AuthLevel.ANONYMOUS)
def stripe_api_v2(req: func.HttpRequest) -> func.HttpResponse:
    """Stripe's v2 API, refused with `api_v2_not_supported` until the proxy governs it."""
    return _stripe(req, _at_root(req))


@bp.route(route="api/stripe/{*path}", auth_level=func.AuthLevel.ANONYMOUS)
def stripe_proxy(req: func.HttpRequest) -> func.HttpResponse:
    """The same proxy under `/api/stripe/` (base URLs with a path: stripe-python, ProxyClient, existing settings)."""
    return _stripe(req, req.route_params.get("path") or "")
