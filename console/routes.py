"""The console's HTTP routes: the page, its whitelisted assets, and the billing-run list.

The page and assets are anonymous because they hold no data: the page asks the operator
for the function key and calls the admin routes with it. The run list is an admin route
like the others (function auth), answered from the runs index and one Durable status read per row.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from billing.run_index import RunIndex
from console import runs
from console.assets import Asset, find_asset, page
from core.errors import SpendgateError
from core.runtime import runtime

bp = df.Blueprint()


def _asset_response(asset: Asset) -> func.HttpResponse:
    return func.HttpResponse(
        asset.body, status_code=200, headers={**asset.headers, "Content-Type": asset.content_type}
    )


def _error(err: SpendgateError) -> func.HttpResponse:
    return func.HttpResponse(err.to_json(), status_code=err.status, headers=err.headers())


@bp.route(route="api/console", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console_page(req: func.HttpRequest) -> func.HttpResponse:
    return _asset_response(page())


@bp.route(route="api/console/assets/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def console_asset(req: func.HttpRequest) -> func.HttpResponse:
    asset = find_asset(req.route_params.get("name"))
    if asset is None or asset.name == "index.html":
        return _error(SpendgateError("not_found", "No such console asset."))
    return _asset_response(asset)


def _status_dict(status: df.DurableOrchestrationStatus) -> dict[str, Any]:
    """The status as the camelCase dict `console.runs` reads (empty-ish for an unknown instance)."""
    return {
        "name": status.name,
        "instanceId": status.instance_id,
        "createdTime": status.created_time,
        "lastUpdatedTime": status.last_updated_time,
        "runtimeStatus": status.runtime_status.value if status.runtime_status else None,
        "customStatus": status.custom_status,
        "output": status.output,
    }


@bp.route(route="api/billing/runs", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def list_billing_runs(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """`GET /api/billing/runs?limit=&continuation=`: billing runs, newest first, a page at a time."""
    rt = runtime()
    try:
        body = await runs.fetch_page(
            client,
            RunIndex(rt.tables, rt.settings.table_prefix),
            _status_dict,
            limit=runs.parse_limit(req.params.get("limit")),
            continuation=req.params.get("continuation"),
        )
    except SpendgateError as err:
        return _error(err)
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
