"""Billing run HTTP routes (function auth): start, inspect, stop and audit a run.

- `POST /api/billing/runs` → 202 with Durable's check-status payload
- `GET  /api/billing/runs/{instance_id}` → status, progress and output
- `POST /api/billing/runs/{instance_id}/stop` → mark the run stopped, revoke its keys, then terminate
- `GET  /api/billing/runs/{instance_id}/spend` → the run's spend from the audit log
- `POST /api/billing/charges` (vault key, no function key) → a payment intent charged once
  per customer, billing period and purpose (`billing.once`; the agent tools use it)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError

from activities.billing import proxy_http
from billing import once, runs
from billing.plan import warnings
from billing.request import parse_run_request
from billing.table import LedgerRecords, StopMarks, charge_claims, stop_marks
from core.errors import SpendgateError
from core.runtime import runtime
from proxy.client import ProxyClient
from proxy.keys import key_from_headers
from proxy.store import LedgerStore
from proxy.vault import vault_service

bp = df.Blueprint()


def _json(body: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, indent=2), status_code=status, mimetype="application/json")


def _error(exc: SpendgateError) -> func.HttpResponse:
    return func.HttpResponse(exc.to_json(), status_code=exc.status, headers=exc.headers())


def _marks() -> StopMarks:
    rt = runtime()
    return stop_marks(rt.tables, rt.settings)


def _with_warnings(resp: func.HttpResponse, warned: list[dict[str, Any]]) -> func.HttpResponse:
    """Durable's check-status answer plus what is odd about the run (`warnings`)."""
    body = json.loads(resp.get_body() or b"{}")
    body["warnings"] = warned
    headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
    return func.HttpResponse(json.dumps(body), status_code=resp.status_code, headers=headers,
                             mimetype="application/json")


@bp.route(route="billing/runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def start_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        try:
            body = req.get_json()
        except ValueError:
            raise SpendgateError("body_invalid", "the body must be JSON") from None
        run, instance_id = parse_run_request(body)
        instance_id = await runs.start_run(client, run, instance_id, vault_service(), _marks())
    except SpendgateError as exc:
        return _error(exc)
    return _with_warnings(client.create_check_status_response(req, instance_id), warnings(run))


@bp.route(route="billing/runs/{instance_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        rt = runtime()
        declines = LedgerRecords(LedgerStore(rt.tables, rt.settings)).declined_object_id
        return _json(await runs.describe_run(client, req.route_params["instance_id"], vault_service(), declines))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="billing/runs/{instance_id}/stop", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def stop_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(
            await runs.stop_run(
                client, vault_service(), req.route_params["instance_id"], _marks(), datetime.now(UTC)
            )
        )
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="billing/runs/{instance_id}/spend", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run_spend(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(await runs.run_spend(client, vault_service(), req.route_params["instance_id"]))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="billing/charges", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def charge_once(req: func.HttpRequest) -> func.HttpResponse:
    """Authenticated by the caller's vault key (like the proxy), not by a function key."""
    rt = runtime()
    headers = {k.lower(): v for k, v in req.headers.items()}

    def poster(vault_key: str) -> ProxyClient:
        # No retries here: the caller's own client retries the whole call with the same key.
        return ProxyClient(rt.settings.proxy_url, vault_key, http=proxy_http(), max_retries=0)

    try:
        answer = once.charge_once(
            LedgerStore(rt.tables, rt.settings),
            charge_claims(rt.tables, rt.settings),
            poster,
            key_from_headers(headers),
            headers.get("idempotency-key"),
            req.get_body() or b"",
            datetime.now(UTC),
        )
    except SpendgateError as exc:
        return _error(exc)
    except AzureError:  # the billing or ledger table is unreachable: nothing was charged, retry
        return _error(SpendgateError("governance_unavailable"))
    out_headers = {"Stripe-Should-Retry": "true" if answer.retryable else "false"}
    if answer.replayed:
        out_headers["Idempotent-Replayed"] = "true"
    return func.HttpResponse(json.dumps(answer.body), status_code=answer.status, headers=out_headers,
                             mimetype="application/json")
