"""Publishing alerts at least once: a row first, then the queues, then the row is marked published.

    table <prefix>alerts
      PartitionKey <subject>   `run-<instance id>` for a run's alerts, else the key id
        RowKey  one fixed name per fact (`row_key` in alerts/notify.py): `threshold-<window>-<ppp>`,
                `approval-<approval id>`, `run-approval`, `run-stopped-by-cap`, `revoked`; so a fact
                has one row, whoever records it (the normal path, a retry, the sweeper)
        alert   the alert's JSON (alerts/model.py; its `id` is derived from the same fact)
        state   `pending` until every queue send succeeded, then `published` (+ `published_at`)
      PartitionKey `_outbox`   RowKey `<subject>|<row key>`: an alert not yet known to be published,
                               written *before* its row (alert JSON, subject, row, created_at) and
                               deleted once the row is published; what the sweeper reads
      PartitionKey `_keys`     RowKey <key id>: keys whose thresholds the sweeper watches
                               (`expires_at`, `checked` = the `alerts_fired` marker found complete)
    queue spendgate-alerts          every alert, for operators' own consumers (the app never reads it)
    queue <prefix>-alerts-webhook   every alert while SPENDGATE_ALERT_WEBHOOK_URL is set; the
                                    `deliver_alert` trigger POSTs it (alerts/webhook.py). Named after
                                    the table prefix: apps sharing a storage account must not consume
                                    each other's deliveries

`stage` writes only the `_outbox` row, marked `staged`, *before* a fact that has no later record
the sweeper could find it by (a revoke, a run's start): if the process dies before `publish`, the
sweeper publishes it once it has verified the fact happened (alerts/sweeper.py), and drops it if
the fact never did.

`publish`: (1) upsert the `_outbox` row (replacing a staged one), (2) create the alert row as `pending` (an existing row means
someone else recorded the fact: stop, send nothing), (3) send to the queues, (4) mark the row
`published`, (5) delete the `_outbox` row. A crash or a failed send at any step leaves the `_outbox`
row, and `finish` (the sweeper, alerts/sweeper.py) completes it later: the row is never duplicated
(step 2 is a create of a fixed RowKey), the messages may be (a crash between 3 and 4): delivery is
at least once, and consumers deduplicate on the alert's `id`. Messages are base64 text, as the
Functions queues extension reads and writes them. `publish` never raises: an alert must never fail
or slow down the charge, revoke or run that raised it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError, ServiceRequestError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.storage.queue import QueueServiceClient

from alerts.model import Alert
from core.settings import Settings
from core.storage import DEVELOPMENT_STORAGE

ALERTS_QUEUE = "spendgate-alerts"
WEBHOOK_QUEUE_BINDING = "%SPENDGATE_TABLE_PREFIX%-alerts-webhook"  # the trigger's queue (app setting expression)
OUTBOX = "_outbox"
KEYS = "_keys"
log = logging.getLogger("spendgate.alerts")


def webhook_queue(settings: Settings) -> str:
    """The webhook delivery queue of this deployment, as the trigger's binding resolves it (in lower case,
    as the host and devhost resolve queue names)."""
    return f"{settings.table_prefix}-alerts-webhook".lower()


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


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class AlertOutbox:
    """Where alerts go (module doc)."""

    def __init__(self, tables: TableServiceClient, queues: QueueServiceClient | None, settings: Settings) -> None:
        self.table_name = f"{settings.table_prefix}alerts"
        self._tables = tables
        self._queues = queues
        self._webhook = bool(settings.alert_webhook_url)
        self._webhook_queue = webhook_queue(settings)
        self._fault = settings.alert_fault  # tests only (core/settings.py)

    @property
    def table(self) -> TableClient:
        return self._tables.get_table_client(self.table_name)

    # --- publishing ----------------------------------------------------------------------
    def publish(self, alert: Alert, row_key: str) -> bool:
        """Record and send `alert` once per (subject, row_key); True when this call sent it."""
        subject = subject_of(alert)
        try:
            self._write(lambda: self.table.upsert_entity(self._outbox_entity(alert, subject, row_key),
                                                         mode=UpdateMode.REPLACE))
        except AzureError as exc:
            log.warning("alert %s (%s) not recorded: %s", alert.id, alert.type, type(exc).__name__)
            return False
        return self._record_and_send(alert, subject, row_key, sweeping=False)

    def stage(self, alert: Alert, row_key: str) -> None:
        """Announce an alert before its fact (module doc); never raises: the fact must not wait on it."""
        entity = {**self._outbox_entity(alert, subject_of(alert), row_key), "staged": True}
        try:
            self._write(lambda: self.table.upsert_entity(entity, mode=UpdateMode.REPLACE))
        except AzureError as exc:
            log.warning("alert %s (%s) not staged: %s", alert.id, alert.type, type(exc).__name__)

    def drop(self, pending: Any) -> None:
        """Forget an `_outbox` row whose fact never happened (a staged alert the sweeper could not verify)."""
        self._drop_outbox(pending["subject"], pending["row"])

    def finish(self, pending: Any) -> bool:
        """Complete an `_outbox` row (the sweeper): create the alert row if it is missing, send it if it
        is not published, then drop the `_outbox` row. True when it sent the alert now."""
        alert = Alert.from_dict(json.loads(pending["alert"]))
        return self._record_and_send(alert, pending["subject"], pending["row"], sweeping=True)

    def _record_and_send(self, alert: Alert, subject: str, row_key: str, *, sweeping: bool) -> bool:
        entity = {"PartitionKey": subject, "RowKey": row_key, "type": alert.type, "created_at": alert.created_at,
                  "alert": alert.to_json(), "state": "pending"}
        try:
            self.table.create_entity(entity)
        except ResourceExistsError:  # recorded before (by us, a retry, or the sweeper)
            try:
                row = self.table.get_entity(subject, row_key)
            except AzureError:
                return False
            if row.get("state", "published") != "pending":
                self._drop_outbox(subject, row_key)
                return False
            if sweeping:  # a pending row whose publisher died or failed to send: send it now
                return self._send_and_mark(Alert.from_dict(json.loads(row["alert"])), subject, row_key)
            return False  # its publisher sends it, or the sweeper does (our `_outbox` row stays until then)
        except AzureError as exc:
            log.warning("alert %s (%s) row not written, left to the sweeper: %s", alert.id, alert.type,
                        type(exc).__name__)
            return False
        return self._send_and_mark(alert, subject, row_key)

    def _send_and_mark(self, alert: Alert, subject: str, row_key: str) -> bool:
        try:
            self._send(ALERTS_QUEUE, alert)
            if self._webhook:
                self._send(self._webhook_queue, alert)
            self.table.update_entity({"PartitionKey": subject, "RowKey": row_key, "state": "published",
                                      "published_at": _iso(datetime.now(UTC))}, mode=UpdateMode.MERGE)
        except AzureError as exc:
            log.warning("alert %s (%s) not sent, left to the sweeper: %s", alert.id, alert.type, type(exc).__name__)
            return False
        self._drop_outbox(subject, row_key)
        log.info("alert %s: %s %s", alert.id, alert.type, subject)
        return True

    def _send(self, queue: str, alert: Alert) -> None:
        if self._fault == "queue":
            raise ServiceRequestError("SPENDGATE_ALERT_FAULT=queue: the queue send fails (tests)")
        if self._queues is None:
            return
        text = base64.b64encode(alert.to_json().encode()).decode("ascii")
        client = self._queues.get_queue_client(queue)
        try:
            client.send_message(text)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            client.send_message(text)

    def _outbox_entity(self, alert: Alert, subject: str, row_key: str) -> dict[str, Any]:
        return {"PartitionKey": OUTBOX, "RowKey": f"{subject}|{row_key}", "subject": subject, "row": row_key,
                "alert": alert.to_json(), "created_at": _iso(datetime.now(UTC))}

    def _drop_outbox(self, subject: str, row_key: str) -> None:
        with contextlib.suppress(AzureError):
            self.table.delete_entity(OUTBOX, f"{subject}|{row_key}")

    def _write(self, call: Any) -> None:
        try:
            call()
        except ResourceNotFoundError:  # the table does not exist yet
            with contextlib.suppress(ResourceExistsError):
                self._tables.create_table(self.table_name)
            call()

    # --- reading -------------------------------------------------------------------------
    def exists(self, subject: str, row_key: str) -> bool:
        try:
            self.table.get_entity(subject, row_key, select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def _partition(self, pk: str) -> list[Any]:
        """Every row of one partition (none while the table does not exist yet)."""
        try:
            return list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": pk}))
        except ResourceNotFoundError:
            return []

    def pending(self) -> list[Any]:
        """The `_outbox` rows: alerts not yet known to be published (one partition)."""
        return self._partition(OUTBOX)

    def watch_key(self, key_id: str, expires_at: datetime) -> None:
        """Add a key to the `_keys` index the sweeper reads (raises: the issue fails rather than go unwatched)."""
        self._write(lambda: self.table.upsert_entity({"PartitionKey": KEYS, "RowKey": key_id,
                                                       "expires_at": _iso(expires_at), "checked": ""}))

    def watched_keys(self) -> list[Any]:
        return self._partition(KEYS)

    def mark_checked(self, key_id: str, marker: str) -> None:
        self.table.update_entity({"PartitionKey": KEYS, "RowKey": key_id, "checked": marker}, mode=UpdateMode.MERGE)

    def unwatch(self, key_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.table.delete_entity(KEYS, key_id)

    def of(self, subject: str, limit: int = 50) -> list[dict[str, Any]]:
        """The alerts recorded for a key id (or `run-<id>`), newest first (pending ones too: recorded facts)."""
        alerts = [json.loads(r["alert"]) for r in self._partition(subject) if r.get("alert")]
        alerts.sort(key=lambda a: str(a.get("created_at")), reverse=True)
        return alerts[:limit]
