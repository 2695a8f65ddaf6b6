"""Billing run activities: thin triggers over `billing.keys` and `billing.charging`.

Each activity takes and returns a plain dict from `billing.payloads` (history-safe), builds
its dependencies (the vault service, the one proxy client) and calls one domain function.
Terminal outcomes are returned; transient faults raise so Durable retries them. Parameters are annotated
`dict`, not `dict[str, Any]`: the Python worker refuses a built-in generic alias on a binding parameter
("invalid non-type annotation") and then loads no function of the app at all.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import httpx

from alerts import notify
from billing import charging, keys
from billing.payloads import ApprovalClose, ApprovalDecision, ChargeRequest, FetchRequest, KeyRequest, RevokeRequest
from billing.table import charge_claims, run_decisions, stop_marks
from core.runtime import runtime
from core.settings import get_settings
from proxy.client import ProxyClient
from proxy.vault import vault_service

bp = df.Blueprint()

# Calls to the proxy from activities share one pooled connection pool per process.
_http: httpx.Client | None = None
_http_lock = threading.Lock()


def proxy_http() -> httpx.Client:
    """The process's HTTP client for the governance proxy (explicit timeouts and limits)."""
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(
                timeout=httpx.Timeout(30.0, connect=5.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
        return _http


def _proxy(key_id: str) -> ProxyClient:
    """A proxy client for one of the run's keys; its secret is derived here, never in history."""
    return ProxyClient(get_settings().proxy_url, vault_service().in_app_vault_key(key_id), http=proxy_http())


@bp.activity_trigger(input_name="payload")
def issue_run_key(payload: dict) -> dict[str, Any]:
    rt = runtime()
    marks = stop_marks(rt.tables, rt.settings)
    return keys.issue_run_key(vault_service(), KeyRequest.from_dict(payload), marks).to_dict()


@bp.activity_trigger(input_name="payload")
def fetch_customers(payload: dict) -> dict[str, Any]:
    request = FetchRequest.from_dict(payload)
    return charging.fetch_customers(_proxy(request.key_id), request).to_dict()


@bp.activity_trigger(input_name="payload")
def charge_customer(payload: dict) -> dict[str, Any]:
    request = ChargeRequest.from_dict(payload)
    rt = runtime()
    claims = charge_claims(rt.tables, rt.settings)
    return charging.charge_customer(_proxy(request.key_id), request, claims, datetime.now(UTC)).to_dict()


@bp.activity_trigger(input_name="payload")
def revoke_run_keys(payload: dict) -> list[str]:
    request = RevokeRequest.from_dict(payload)
    vault = vault_service()
    revoked = keys.revoke_run_keys(vault, request.labels)
    if request.stopped == "cap_exceeded" and request.instance_id:  # after the revoke: the alert never delays it
        spend = vault.spend(request.labels[0])
        caps = [int(k.get("total_cap_cents") or k.get("cap_cents") or 0) for k in spend.get("keys", [])]
        key_id = spend["keys"][-1]["key_id"] if spend.get("keys") else None
        notify.run_stopped_by_cap(request.instance_id, key_id, int(spend.get("spent_cents", 0)), max(caps, default=0))
    return revoked


@bp.activity_trigger(input_name="payload")
def close_run_approval(payload: dict) -> dict[str, Any]:
    """The run's approval window ended: write the timeout as its decision unless one is there already."""
    request = ApprovalClose.from_dict(payload)
    rt = runtime()
    timeout = ApprovalDecision("approval_timeout", at=request.expires_at, reason="nobody decided in time")
    return run_decisions(rt.tables, rt.settings).decide(request.instance_id, timeout)[1].to_dict()
