"""The SDK scenarios of test_sdks_http.py, once per official SDK, with one result shape.

`run_node` runs tests/proxy/node/scenarios.mjs with the npm `stripe` package (installed by
`make setup`); `run_python` runs the same scenarios with stripe-python in this process. Each
returns ``{"sdk", "result" | "error"}``; an error is
``{"class", "status", "code", "should_retry"}`` as the SDK raised it. Each client gets only what
a user would give it: the vault key and where the app is (stripe-node: host, port, protocol;
stripe-python: `base_addresses`, since `StripeClient` has no host option).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import stripe

from devhost.services import REPO_ROOT

NODE_SCRIPT = Path(__file__).parent / "node" / "scenarios.mjs"
SDKS = ("node", "python")


def run(sdk: str, base_url: str, key: str, scenario: str, **params: Any) -> dict[str, Any]:
    """One scenario with one SDK against the app at `base_url` (e.g. ``http://127.0.0.1:7071``)."""
    return (run_node if sdk == "node" else run_python)(base_url, key, scenario, **params)


def run_node(base_url: str, key: str, scenario: str, **params: Any) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is not on PATH (Node 20 is needed, see README)"
    url = urlsplit(base_url)
    cfg = {"scenario": scenario, "host": url.hostname, "port": url.port, "protocol": url.scheme, "key": key,
           "params": params}
    proc = subprocess.run([node, str(NODE_SCRIPT), json.dumps(cfg)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, f"scenarios.mjs failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _pi(p: dict[str, Any]) -> dict[str, Any]:
    return {"amount": p["amount"], "currency": "usd", "confirm": True, "payment_method": "pm_card_visa",
            "metadata": {"test_tag": p["tag"]}}


def _summary(intent: Any) -> dict[str, Any]:
    return {"id": intent.id, "status": intent.status, "amount": intent.amount}


def _create_and_retrieve(client: stripe.StripeClient, p: dict[str, Any]) -> dict[str, Any]:
    created = client.v1.payment_intents.create(params=_pi(p))  # type: ignore[arg-type]
    return {"created": _summary(created), "retrieved": _summary(client.v1.payment_intents.retrieve(created.id))}


def _create(client: stripe.StripeClient, p: dict[str, Any]) -> dict[str, Any]:
    return {"created": _summary(client.v1.payment_intents.create(params=_pi(p)))}  # type: ignore[arg-type]


def _list_all(client: stripe.StripeClient, p: dict[str, Any]) -> dict[str, Any]:
    page = client.v1.payment_intents.list(params={"limit": p["limit"]})
    return {"ids": [intent.id for intent in page.auto_paging_iter()]}


def _list_customers(client: stripe.StripeClient, p: dict[str, Any]) -> dict[str, Any]:
    return {"customers": len(client.v1.customers.list(params={"limit": 1}).data)}


def _v2_list(client: stripe.StripeClient, p: dict[str, Any]) -> dict[str, Any]:
    return {"destinations": len(client.v2.core.event_destinations.list().data)}


_SCENARIOS: dict[str, Callable[[stripe.StripeClient, dict[str, Any]], dict[str, Any]]] = {
    "create_and_retrieve": _create_and_retrieve,
    "create": _create,
    "list_all": _list_all,
    "list_customers": _list_customers,
    "v2_list": _v2_list,
}


def run_python(base_url: str, key: str, scenario: str, **params: Any) -> dict[str, Any]:
    # stripe-node retries twice by default; StripeClient does not retry unless told, so it is told the same.
    client = stripe.StripeClient(key, base_addresses={"api": base_url}, max_network_retries=2)
    out: dict[str, Any] = {"sdk": "python"}
    try:
        out["result"] = _SCENARIOS[scenario](client, params)
    except stripe.StripeError as err:
        headers = err.headers or {}
        # The body's code: stripe-python sets `err.code` only on some classes (not on PermissionError).
        code = ((err.json_body or {}).get("error") or {}).get("code")
        out["error"] = {"class": type(err).__name__, "status": err.http_status, "code": code,
                        "should_retry": headers.get("stripe-should-retry")}
    return out
