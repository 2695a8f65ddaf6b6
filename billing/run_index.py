"""The billing runs index: one row per run started through `POST /api/billing/runs`, newest first.

The console cannot list runs through the Durable client: on Azure an instance query is one
GET that answers the extension's first page (100 instances, in instance-id order, batch
sub-orchestrations included) and the SDK drops the continuation token, so newer runs
silently vanish past 100 instances. This table is written before a run is started and read
a page at a time in its own order, newest first:

    table ``<prefix>runs``, PartitionKey ``run``,
    RowKey ``<inverted created ms, 14 digits>-<instance id>``, property ``InstanceId``.

A row whose start then failed names an instance the Durable client does not know; the list
leaves it out. Table Storage's own continuation (`query_entities(...).by_page`) pages it,
so a page costs one query plus one status read per run shown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient

from core.errors import SpendgateError

PARTITION = "run"
_INVERT_MS = 10**14


@dataclass(frozen=True)
class IndexedRun:
    instance_id: str
    created: datetime


class RunIndex:
    """The index table of one deployment (`<prefix>runs`)."""

    def __init__(self, tables: TableServiceClient, table_prefix: str) -> None:
        self.tables = tables
        self.name = f"{table_prefix}runs"
        self.table = tables.get_table_client(self.name)

    def record(self, instance_id: str, created: datetime) -> None:
        """Add a run (before it is started, so a started run is always listed)."""
        ms = int(created.timestamp() * 1000)
        entity = {
            "PartitionKey": PARTITION,
            "RowKey": f"{_INVERT_MS - ms:014d}-{instance_id}",
            "InstanceId": instance_id,
            "Created": created,
        }
        try:
            self.table.upsert_entity(entity)
        except ResourceNotFoundError:  # the table is made on first use
            with contextlib.suppress(ResourceExistsError):
                self.tables.create_table(self.name)
            self.table.upsert_entity(entity)

    def page(self, *, limit: int, continuation: str | None) -> tuple[list[IndexedRun], str | None]:
        """One page, newest first, and the token for the next page (None at the end)."""
        pages = self.table.query_entities(
            f"PartitionKey eq '{PARTITION}'", results_per_page=limit, select=["InstanceId", "Created"]
        ).by_page(continuation_token=decode_continuation(continuation))
        try:
            rows = list(next(pages))
        except (StopIteration, ResourceNotFoundError):  # no run was ever started
            return [], None
        token = pages.continuation_token
        return [IndexedRun(str(r["InstanceId"]), r["Created"]) for r in rows], (_encode(token) if token else None)


def _encode(token: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")


def decode_continuation(token: str | None) -> dict[str, str] | None:
    """The index position a console token stands for; a token not from a previous page is a 400."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        position = None
    if (
        isinstance(position, dict)
        and position
        and set(position) <= {"PartitionKey", "RowKey"}
        and all(isinstance(v, str) for v in position.values())
    ):
        return position
    raise SpendgateError("policy_invalid", "continuation is not a token from a previous page.", param="continuation")
