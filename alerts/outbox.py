"""Publishing alerts: a row in `<prefix>alerts`, a message on `spendgate-alerts`, and the webhook's queue.

    table <prefix>alerts   PartitionKey  `run-<instance id>` for a run's alerts, else the key id
                           RowKey        `<10^14 − epoch ms>-<alert id>` (newest first), or for a spend
                                         threshold `threshold-<window>-<percent>` (one per threshold and window)
                           alert         the alert's JSON (alerts/model.py)
    queue spendgate-alerts               every alert, for operators' own consumers (the app never reads it)
    queue <prefix>-alerts-webhook        every alert while SPENDGATE_ALERT_WEBHOOK_URL is set; the
                                         `deliver_alert` trigger POSTs it (alerts/webhook.py). Named
                                         after the table prefix (`%SPENDGATE_TABLE_PREFIX%` in the
                                         binding): apps sharing a storage account must not consume
                                         each other's deliveries (one without a webhook would drop them)

Messages are base64 text, as the Functions queues extension reads and writes them.
`publish` never raises: an alert is news about spend, and failing to send it must never fail
or slow down the charge, revoke or run that raised it (it is logged instead). A threshold row
that exists already means the alert was published before: nothing is sent again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.queue import QueueServiceClient

from alerts.model import Alert
from core.settings import Settings
from core.storage import DEVELOPMENT_STORAGE

ALERTS_QUEUE = "spendgate-alerts"
WEBHOOK_QUEUE_BINDING = "%SPENDGATE_TABLE_PREFIX%-alerts-webhook"  # the trigger's queue (app setting expression)


def webhook_queue(settings: Settings) -> str:
    """The webhook delivery queue of this deployment, as the trigger's binding resolves it (in lower case,
    as the host and devhost resolve queue names)."""
    return f"{settings.table_prefix}-alerts-webhook".lower()
_INVERT_MS = 10**14
log = logging.getLogger("spendgate.alerts")


def queue_service(settings: Settings) -> QueueServiceClient:
    """The app's queue service: the connection string locally, the managed identity on Azure."""
    conn = settings.storage_connection_string
    if conn:
        return QueueServiceClient.from_connection_string(DEVELOPMENT_STORAGE if conn.strip() ==
                                                         "UseDevelopmentStorage=true" else conn)
    from azure.identity import DefaultAzureCredential

    account = settings.table_endpoint.split("//", 1)[1].split(".", 1)[0]
    return QueueServiceClient(f"https://{account}.queue.core.windows.net",
                              credential=DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id))


def subject_of(alert: Alert) -> str:
    return f"run-{alert.run_id}" if alert.run_id else alert.key_id or "_global"


class AlertOutbox:
    """Where alerts go (module doc)."""

    def __init__(self, tables: TableServiceClient, queues: QueueServiceClient | None, settings: Settings) -> None:
        self.table_name = f"{settings.table_prefix}alerts"
        self._tables = tables
        self._queues = queues
        self._webhook = bool(settings.alert_webhook_url)
        self._webhook_queue = webhook_queue(settings)

    @property
    def table(self) -> TableClient:
        return self._tables.get_table_client(self.table_name)

    def publish(self, alert: Alert, row_key: str | None = None) -> bool:
        """Record and send `alert`; False when its threshold row existed (already published) or on failure."""
        ms = int(datetime.fromisoformat(alert.created_at.replace("Z", "+00:00")).timestamp() * 1000)
        entity = {"PartitionKey": subject_of(alert), "RowKey": row_key or f"{_INVERT_MS - ms:014d}-{alert.id}",
                  "type": alert.type, "created_at": alert.created_at, "alert": alert.to_json()}
        try:
            self._create(entity)
        except ResourceExistsError:
            return False
        except AzureError as exc:
            log.warning("alert %s (%s) not recorded: %s", alert.id, alert.type, type(exc).__name__)
            return False
        self._send(ALERTS_QUEUE, alert)
        if self._webhook:
            self._send(self._webhook_queue, alert)
        log.info("alert %s: %s %s", alert.id, alert.type, subject_of(alert))
        return True

    def _create(self, entity: dict[str, Any]) -> None:
        try:
            self.table.create_entity(entity)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self._tables.create_table(self.table_name)
            self.table.create_entity(entity)

    def _send(self, queue: str, alert: Alert) -> None:
        if self._queues is None:
            return
        text = base64.b64encode(alert.to_json().encode()).decode("ascii")
        client = self._queues.get_queue_client(queue)
        try:
            try:
                client.send_message(text)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                client.send_message(text)
        except AzureError as exc:
            log.warning("alert %s not queued on %s: %s", alert.id, queue, type(exc).__name__)

    def of(self, subject: str, limit: int = 50) -> list[dict[str, Any]]:
        """The alerts recorded for a key id (or `run-<id>`), newest first."""
        try:
            rows = list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": subject}))
        except ResourceNotFoundError:
            return []
        alerts = [json.loads(r["alert"]) for r in rows if r.get("alert")]
        alerts.sort(key=lambda a: str(a.get("created_at")), reverse=True)
        return alerts[:limit]


def now_utc() -> datetime:
    return datetime.now(UTC)
