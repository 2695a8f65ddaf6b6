"""Billing run HTTP routes (function auth): start, inspect, stop and audit a run.

- `POST /api/billing/runs` → 202 with the run's id and its own status, stop and spend URLs
  (never Durable's check-status payload: on Azure its webhook URLs carry the extension's
  system key, which can terminate, purge or raise events on any instance, and terminating
  through it would skip `stop_run`'s revoke-first step)
- `GET  /api/billing/runs/{instance_id}` → status, progress and output
- `POST /api/billing/runs/{instance_id}/stop` → revoke the run's keys, then terminate
- `GET  /api/billing/runs/{instance_id}/spend` → the run's spend from the audit log
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit

import azure.durable_functions as df
import azure.functions as func

from billing import runs
from billing.request import parse_run_request
from billing.run_index import RunIndex
from core.errors import SpendgateError
from core.runtime import runtime
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
        index = RunIndex(rt.tables, rt.settings.table_prefix)
        instance_id = await runs.start_run(client, run, instance_id, vault_service(), index)
    except SpendgateError as exc:
        return _error(exc)
    links = run_links(req.url, instance_id)
    return func.HttpResponse(
        json.dumps(links, indent=2),
        status_code=202,
        mimetype="application/json",
        headers={"Location": links["status_url"], "Retry-After": "2"},
    )


@bp.route(route="api/billing/runs/{instance_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(await runs.describe_run(client, req.route_params["instance_id"], vault_service()))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="api/billing/runs/{instance_id}/stop", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def stop_billing_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(await runs.stop_run(client, vault_service(), req.route_params["instance_id"]))
    except SpendgateError as exc:
        return _error(exc)


@bp.route(route="api/billing/runs/{instance_id}/spend", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_billing_run_spend(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        return _json(await runs.run_spend(client, vault_service(), req.route_params["instance_id"]))
    except SpendgateError as exc:
        return _error(exc)
