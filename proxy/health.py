"""`GET /api/health`: is table storage reachable, is the Stripe upstream reachable?"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import httpx
from azure.core.exceptions import AzureError
from azure.data.tables import TableServiceClient

from core.runtime import runtime
from core.settings import MissingSettingError

bp = func.Blueprint()


def check_health(tables: TableServiceClient, stripe_http: httpx.Client) -> tuple[bool, dict[str, Any]]:
    """Probe storage and Stripe once each; returns (all ok, per-part detail)."""
    parts: dict[str, Any] = {}
    try:
        next(iter(tables.list_tables(results_per_page=1).by_page()), None)
        parts["table_storage"] = {"ok": True}
    except (AzureError, ValueError) as exc:
        parts["table_storage"] = {"ok": False, "error": type(exc).__name__}
    try:
        # Any HTTP answer means the upstream is reachable; no secret is sent.
        resp = stripe_http.get("/v1/balance", timeout=5)
        parts["stripe"] = {"ok": resp.status_code < 500, "status": resp.status_code}
    except httpx.HTTPError as exc:
        parts["stripe"] = {"ok": False, "error": type(exc).__name__}
    return all(p["ok"] for p in parts.values()), parts


@bp.route(route="api/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    try:
        rt = runtime()
        ok, parts = check_health(rt.tables, rt.stripe_http)
    except MissingSettingError as exc:  # a misconfigured app is down, not broken: say which setting
        ok, parts = False, {"settings": {"ok": False, "error": f"app setting {exc.name} is missing or invalid"}}
    body = {"status": "ok" if ok else "degraded", "parts": parts}
    return func.HttpResponse(json.dumps(body), status_code=200 if ok else 503, mimetype="application/json")
