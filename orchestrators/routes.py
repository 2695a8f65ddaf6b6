"""Billing run HTTP routes (function auth): start, inspect, stop and audit a run.

- `POST /api/billing/runs` → 202 with the run's id and its own status, stop and spend URLs
  (never Durable's check-status payload: on Azure its webhook URLs carry the extension's
  system key, which can terminate, purge or raise events on any instance, and terminating
  through it would skip `stop_run`'s revoke-first step)
- `GET  /api/billing/runs/{instance_id}` → status, progress and output
- `POST /api/billing/runs/{instance_id}/stop` → mark the run stopped, revoke its keys, then terminate
- `POST /api/billing/runs/{instance_id}/approve` and `/reject` → the one decision on a run that waits
  for a person (`billing.run_approval`; 409 `approval_not_pending` with the run's state otherwise)
- `GET  /api/billing/runs/{instance_id}/spend` → the run's spend from the audit log
- `POST /api/billing/charges` (vault key, no function key) → a payment intent charged once
  per customer, billing period and purpose (`billing.once`; the agent tools use it)
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError

from activities.billing import proxy_http
from alerts import notify
from billing import once, run_approval, runs
from billing.plan import warnings
from billing.request import parse_run_request
from billing.run_index import RunIndex
from billing.table import LedgerRecords, RunDecisions, StopMarks, charge_claims, run_decisions, stop_marks
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


def run_links(request_url: str, instance_id: str) -> dict[str, str]:
    """The 202 body of a started run: its id and the app's own URLs for it (no webhook, no key)."""
    origin = urlsplit(request_url)
    base = f"{origin.scheme}://{origin.netloc}/api/billing/runs/{quote(instance_id, safe='')}"
    return {"id": instance_id, "status_url": base, "stop_url": f"{base}/stop", "spend_url": f"{base}/spend"}


def _marks() -> StopMarks:
    rt = runtime()
    return stop_marks(rt.tables, rt.settings)


def _decisions() -> RunDecisions:
    rt = runtime()
    return run_decisions(rt.tables, rt.settings)


@bp.route(route="api/billing/runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def start_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        try:
            body = req.get_json()
        except ValueError:
            raise SpendgateError("body_invalid", "the body must be JSON") from None
        run, instance_id = parse_run_request(body)
        rt = runtime()
        run = run_approval.with_approval_window(
            run, rt.settings.approval_threshold_cents, rt.settings.approval_timeout, datetime.now(UTC)
        )
        index = RunIndex(rt.tables, rt.settings.table_prefix)
        marks = await asyncio.to_thread(_marks)  # may create the billing table: never on the event loop
        stage = partial(notify.run_approval_staged, budget_cents=run.budget_cents,  # before the start: a crash
                        expires_at=run.approval_expires_at) if run.approval_expires_at else None  # cannot lose it
        instance_id = await runs.start_run(client, run, instance_id, vault_service(), marks, index, stage)
    except SpendgateError as exc:
        return _error(exc)
    body = {**run_links(req.url, instance_id), "warnings": warnings(run)}
    if run.approval_expires_at:
        body["status"] = "awaiting_approval"
        body["approval"] = {"expires_at": run.approval_expires_at, "approve_url": body["status_url"] + "/approve",
                            "reject_url": body["status_url"] + "/reject"}
        await asyncio.to_thread(notify.run_approval_requested, instance_id, run.budget_cents, run.approval_expires_at)
    return func.HttpResponse(
        json.dumps(body, indent=2),
        status_code=202,
        mimetype="application/json",
        headers={"Location": body["status_url"], "Retry-After": "2"},
    )


@bp.route(route="api/billing/runs/{instance_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        rt = runtime()
        declines = LedgerRecords(LedgerStore(rt.tables, rt.settings)).declined_object_id
        instance_id = req.route_params["instance_id"]
        described = await runs.describe_run(client, instance_id, vault_service(), declines)
        approval = await run_approval.approval_of(
            await client.get_status(instance_id, show_input=True), await asyncio.to_thread(_decisions), instance_id
        )
        if approval is not None:
            described["approval"] = approval
        return _json(described)
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="api/billing/runs/{instance_id}/stop", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def stop_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(
            await runs.stop_run(
                client,
                vault_service(),
                req.route_params["instance_id"],
                await asyncio.to_thread(_marks),
                datetime.now(UTC),
                await asyncio.to_thread(_decisions),
                notify.key_revoked,
                notify.key_revoking,
            )
        )
    except SpendgateError as exc:
        return _error(exc)


async def _decide(req: func.HttpRequest, client: df.DurableOrchestrationClient, decision: str) -> func.HttpResponse:
    try:
        try:
            body = json.loads(req.get_body() or b"null")
        except ValueError:
            raise SpendgateError("body_invalid", "the body must be JSON") from None
        who, reason = run_approval.decider(dict(req.headers), body)
        return _json(await run_approval.decide_run(
            client, await asyncio.to_thread(_decisions), await asyncio.to_thread(_marks),
            req.route_params["instance_id"], decision, who, reason, datetime.now(UTC),
        ))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="api/billing/runs/{instance_id}/approve", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def approve_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await _decide(req, client, "approved")


@bp.route(route="api/billing/runs/{instance_id}/reject", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def reject_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await _decide(req, client, "rejected")


@bp.route(route="api/billing/runs/{instance_id}/spend", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run_spend(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(await runs.run_spend(client, vault_service(), req.route_params["instance_id"]))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="api/billing/charges", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
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
