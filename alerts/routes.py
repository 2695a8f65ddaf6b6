"""Alert triggers (thin): the webhook delivery from its queue, and the alerts the console lists.

- queue `<SPENDGATE_TABLE_PREFIX>-alerts-webhook` → `deliver_alert`: POSTs the alert, signed, to
  `SPENDGATE_ALERT_WEBHOOK_URL` (alerts/webhook.py); raising lets the host redeliver it
  (host.json `maxDequeueCount`) and then move it to `<that queue>-poison`.
- `GET /api/alerts?key_id=…` (or `?run_id=…`; function key) → that key's (run's) alerts, newest first.
"""

from __future__ import annotations

import json
import logging

import azure.functions as func
import httpx

from alerts import notify, webhook
from alerts.outbox import WEBHOOK_QUEUE_BINDING
from core.errors import SpendgateError
from core.runtime import runtime
from core.settings import STORAGE_CONNECTION

bp = func.Blueprint()
log = logging.getLogger("spendgate.alerts")
_http: httpx.Client | None = None


def _client() -> httpx.Client:
    """The webhook's HTTP client, built on first use (never at import), explicit timeouts."""
    global _http
    if _http is None:
        _http = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), limits=httpx.Limits(max_connections=8))
    return _http


@bp.queue_trigger(arg_name="msg", queue_name=WEBHOOK_QUEUE_BINDING, connection=STORAGE_CONNECTION)
def deliver_alert(msg: func.QueueMessage) -> None:
    settings = runtime().settings
    url = settings.alert_webhook_url
    if not url:  # the setting was removed after the alert was queued: nothing to deliver to
        return
    attempts = webhook.deliver(_client(), url, settings.alert_webhook_secret, msg.get_body())
    log.info("alert webhook delivered message %s in %d attempt(s) (dequeue %s)", msg.id, attempts, msg.dequeue_count)


@bp.route(route="api/alerts", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_alerts(req: func.HttpRequest) -> func.HttpResponse:
    key_id, run_id = req.params.get("key_id"), req.params.get("run_id")
    if bool(key_id) == bool(run_id):
        err = SpendgateError("policy_invalid", "give exactly one of key_id or run_id", param="key_id")
        return func.HttpResponse(err.to_json(), status_code=err.status, headers=err.headers())
    subject = str(key_id) if key_id else f"run-{run_id}"
    body = {"data": notify.outbox().of(subject)}
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
