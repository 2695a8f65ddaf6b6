"""The durable engine's state in Azure Table Storage (Azurite locally): the one place that knows its layout.

Tables, named from the task hub like the Durable extension's own (`<hub>Instances`, `<hub>History`):

- `<hub>Instances`: one row per instance (PartitionKey = instance id, RowKey = ""): name, runtime
  status, input, output, custom status, times, and the engine's bookkeeping: `Generation`
  (bumped by continue-as-new and restarts), `HistoryLength` (committed events of the current
  generation: the commit point), `NextSeq` (the next task sequence number) and `ActionsSeen`
  (top-level orchestrator actions already turned into history).
- `<hub>History`: one row per history event (PartitionKey = instance id, RowKey =
  `<generation>-<index>`), the event JSON plus host-only `Meta` (retry bookkeeping) and the
  inbox key it was taken from.
- `<hub>Inbox`: new events not yet in history (activity results, timer fires, raised events,
  sub-orchestration results, terminate), RowKey ordered by arrival.
- `{hub}-largemessages` (a blob container): any text over 60 KiB (UTF-16) that a row would hold:
  the row keeps `<Name>BlobName` (payloads.py, as the extension's Azure Storage provider does).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from core.storage import submit_transaction, table_service_from_connection_string
from devhost.durable.payloads import LargePayloads

BATCH_CHARS = 1_500_000  # keep a transaction well under its 4 MiB cap
TERMINAL = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


def _q(value: str) -> str:
    return value.replace("'", "''")


@dataclass
class Instance:
    """An instance row, payloads resolved. `etag` is the row version the commit must match."""

    instance_id: str
    name: str
    status: str
    input: str | None
    output: str | None = None
    custom_status: str | None = None
    created: str = ""
    updated: str = ""
    generation: int = 0
    history_length: int = 0
    next_seq: int = 0
    actions_seen: int = 0
    parent_instance_id: str | None = None
    parent_task_id: int | None = None
    parent_generation: int | None = None
    owner: str | None = None  # the engine that committed last (see DurableEngine's ownership)
    etag: str | None = field(default=None, repr=False)
    # property -> (blob name, text) of large texts as read: an unchanged text keeps its blob
    blobs: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class HistoryRow:
    event: dict[str, Any]
    meta: dict[str, Any]
    inbox_key: str | None


@dataclass
class InboxItem:
    key: str
    event: dict[str, Any]
    generation: int  # -1: any generation (raised events, terminate)


class DurableStore:
    """Reads and writes the engine's tables; every method is one storage concern."""

    def __init__(self, connection_string: str, task_hub: str) -> None:
        service = table_service_from_connection_string(connection_string)
        self.hub = task_hub
        self.instances: TableClient = service.get_table_client(f"{task_hub}Instances")
        self.history: TableClient = service.get_table_client(f"{task_hub}History")
        self.inbox: TableClient = service.get_table_client(f"{task_hub}Inbox")
        self.payloads = LargePayloads(connection_string, task_hub)
        self.engines: TableClient = service.get_table_client(f"{task_hub}Engines")

    def create_tables(self) -> None:
        for table in (self.instances, self.history, self.inbox, self.engines):
            with contextlib.suppress(ResourceExistsError):
                table.create_table()

    # --- large text (blobs, see payloads.py) ------------------------------------------
    def _put_text(self, props: dict[str, Any], name: str, text: str | None, instance_id: str) -> None:
        self.payloads.put(props, name, text, instance_id)

    def _get_text(self, entity: dict[str, Any], name: str) -> str | None:
        return self.payloads.get(entity, name)

    # --- instances -----------------------------------------------------------------
    def _instance_entity(self, inst: Instance) -> dict[str, Any]:
        props: dict[str, Any] = {
            "PartitionKey": inst.instance_id,
            "RowKey": "",
            "Name": inst.name,
            "RuntimeStatus": inst.status,
            "CreatedTime": inst.created,
            "LastUpdatedTime": inst.updated,
            "Generation": inst.generation,
            "HistoryLength": inst.history_length,
            "NextSeq": inst.next_seq,
            "ActionsSeen": inst.actions_seen,
        }
        if inst.owner:
            props["Owner"] = inst.owner
        if inst.parent_instance_id:
            props.update(
                ParentInstanceId=inst.parent_instance_id,
                ParentTaskId=inst.parent_task_id,
                ParentGeneration=inst.parent_generation,
            )
        for name, text in (("Input", inst.input), ("Output", inst.output), ("CustomStatus", inst.custom_status)):
            known = inst.blobs.get(name)
            if known is not None and text is not None and known[1] == text:  # unchanged: no second upload
                props[f"{name}BlobName"] = known[0]
                continue
            self._put_text(props, name, text, inst.instance_id)
            if f"{name}BlobName" in props and text is not None:
                inst.blobs[name] = (props[f"{name}BlobName"], text)
        return props

    def _instance_from(self, e: Any, with_payloads: bool = True) -> Instance:
        inst = self._instance_fields(e, with_payloads)
        if with_payloads:
            for name, text in (("Input", inst.input), ("Output", inst.output), ("CustomStatus", inst.custom_status)):
                if e.get(f"{name}BlobName") and text is not None:
                    inst.blobs[name] = (str(e[f"{name}BlobName"]), text)
        return inst

    def _instance_fields(self, e: Any, with_payloads: bool) -> Instance:
        return Instance(
            instance_id=e["PartitionKey"],
            name=e["Name"],
            status=e["RuntimeStatus"],
            input=self._get_text(e, "Input") if with_payloads else None,
            output=self._get_text(e, "Output") if with_payloads else None,
            custom_status=self._get_text(e, "CustomStatus") if with_payloads else None,
            created=e.get("CreatedTime", ""),
            updated=e.get("LastUpdatedTime", ""),
            generation=int(e.get("Generation", 0)),
            history_length=int(e.get("HistoryLength", 0)),
            next_seq=int(e.get("NextSeq", 0)),
            actions_seen=int(e.get("ActionsSeen", 0)),
            parent_instance_id=e.get("ParentInstanceId"),
            parent_task_id=e.get("ParentTaskId"),
            parent_generation=e.get("ParentGeneration"),
            owner=e.get("Owner"),
            etag=e.metadata.get("etag"),
        )

    def get_instance(self, instance_id: str) -> Instance | None:
        try:
            return self._instance_from(self.instances.get_entity(instance_id, ""))
        except ResourceNotFoundError:
            return None

    def insert_instance(self, inst: Instance) -> None:
        """Create the row; raises ResourceExistsError if the id is taken."""
        self.instances.create_entity(self._instance_entity(inst))

    def replace_instance(self, inst: Instance) -> None:
        """Write the row only if it is unchanged since `inst.etag` was read (the commit point).

        On success `inst.etag` becomes the row's new version.
        """
        meta = self.instances.update_entity(
            self._instance_entity(inst),
            mode=UpdateMode.REPLACE,
            etag=inst.etag,
            match_condition=MatchConditions.IfNotModified,
        )
        inst.etag = meta.get("etag")

    def mark_failed(self, instance_id: str, output_json: str, now: str) -> Instance | None:
        """Set an unfinished instance to Failed with a small output, touching nothing else (a merge,
        If-Match): its large properties stay where they are. None if it is gone or already finished."""
        for _ in range(5):
            inst = self.get_instance(instance_id)
            if inst is None or inst.terminal:
                return None
            patch = {"PartitionKey": instance_id, "RowKey": "", "RuntimeStatus": "Failed", "Output": output_json,
                     "LastUpdatedTime": now}
            try:
                self.instances.update_entity(
                    patch, mode=UpdateMode.MERGE, etag=inst.etag, match_condition=MatchConditions.IfNotModified
                )
            except ResourceModifiedError:
                continue
            inst.status, inst.output, inst.updated = "Failed", output_json, now
            return inst
        return None

    def list_instances(self, with_payloads: bool = True) -> Iterator[Instance]:
        for e in self.instances.list_entities():
            yield self._instance_from(e, with_payloads)

    def purge(self, instance_id: str) -> None:
        """Delete everything stored for one instance."""
        for table in (self.history, self.inbox):
            self._delete_partition(table, instance_id)
        self.payloads.delete_instance(instance_id)
        with contextlib.suppress(ResourceNotFoundError):
            self.instances.delete_entity(instance_id, "")

    def delete_generations_before(self, instance_id: str, generation: int) -> None:
        """Drop history rows of earlier generations (after continue-as-new or a restart)."""
        rows = self.history.query_entities(
            f"PartitionKey eq '{_q(instance_id)}' and RowKey lt '{generation:06d}-'", select=["PartitionKey", "RowKey"]
        )
        self._delete_rows(self.history, rows)

    def _delete_partition(self, table: TableClient, pk: str) -> None:
        rows = table.query_entities(f"PartitionKey eq '{_q(pk)}'", select=["PartitionKey", "RowKey"])
        self._delete_rows(table, rows)

    @staticmethod
    def _delete_rows(table: TableClient, rows: Iterable[Any]) -> None:
        keys = [(row["PartitionKey"], row["RowKey"]) for row in rows]
        for i in range(0, len(keys), 100):
            chunk = keys[i : i + 100]
            try:
                submit_transaction(table, [("delete", {"PartitionKey": pk, "RowKey": rk}) for pk, rk in chunk])
            except TableTransactionError:  # one row already gone fails the batch: delete one by one
                for pk, rk in chunk:
                    with contextlib.suppress(ResourceNotFoundError):
                        table.delete_entity(pk, rk)

    # --- engines sharing the task hub ---------------------------------------------
    def heartbeat(self, engine_id: str, *, host: str, pid: int, base_url: str, now: str, stopped: bool = False) -> None:
        self.engines.upsert_entity(
            {
                "PartitionKey": "engine",
                "RowKey": engine_id,
                "Host": host,
                "Pid": pid,
                "BaseUrl": base_url,
                "Alive": now,
                "Stopped": stopped,
            },
            mode=UpdateMode.REPLACE,
        )

    def engine_rows(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.engines.query_entities("PartitionKey eq 'engine'")]

    # --- history -------------------------------------------------------------------
    def load_history(self, instance_id: str, generation: int, length: int) -> list[HistoryRow]:
        """The committed history: rows 0..length-1 of the generation (rows past it are uncommitted)."""
        if length <= 0:
            return []
        rows = self.history.query_entities(
            f"PartitionKey eq '{_q(instance_id)}' and RowKey ge '{generation:06d}-' "
            f"and RowKey lt '{generation:06d}-{length:08d}'"
        )
        out: dict[int, HistoryRow] = {}
        for r in rows:
            idx = int(r["RowKey"].split("-")[1])
            out[idx] = HistoryRow(
                json.loads(self._get_text(r, "Event") or "{}"),
                json.loads(self._get_text(r, "Meta") or "{}"),
                r.get("InboxKey"),
            )
        if len(out) != length:
            raise RuntimeError(f"history of {instance_id} has {len(out)} of {length} committed rows")
        return [out[i] for i in range(length)]

    def write_history(self, instance_id: str, generation: int, start: int, rows: list[HistoryRow]) -> None:
        """Upsert rows start..start+n-1 (idempotent: a retried episode overwrites its own rows)."""
        batch: list[Any] = []
        size = 0
        for i, row in enumerate(rows):
            props: dict[str, Any] = {"PartitionKey": instance_id, "RowKey": f"{generation:06d}-{start + i:08d}"}
            if row.inbox_key:
                props["InboxKey"] = row.inbox_key
            self._put_text(props, "Event", json.dumps(row.event), instance_id)
            self._put_text(props, "Meta", json.dumps(row.meta), instance_id)  # a retry's input can be large
            weight = len(props.get("Event", "")) + len(props.get("Meta", "")) + 500
            if batch and (len(batch) == 100 or size + weight > BATCH_CHARS):
                submit_transaction(self.history, batch)
                batch, size = [], 0
            batch.append(("upsert", props, {"mode": UpdateMode.REPLACE}))
            size += weight
        if batch:
            submit_transaction(self.history, batch)

    # --- inbox ---------------------------------------------------------------------
    def add_inbox(self, instance_id: str, event: dict[str, Any], generation: int = -1) -> str:
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        props: dict[str, Any] = {"PartitionKey": instance_id, "RowKey": key, "Gen": generation}
        self._put_text(props, "Event", json.dumps(event), instance_id)
        with contextlib.suppress(ResourceExistsError):  # the key is unique: a retried create that landed
            self.inbox.create_entity(props)
        return key

    def load_inbox(self, instance_id: str) -> list[InboxItem]:
        rows = self.inbox.query_entities(f"PartitionKey eq '{_q(instance_id)}'")
        items = [
            InboxItem(r["RowKey"], json.loads(self._get_text(r, "Event") or "{}"), int(r.get("Gen", -1))) for r in rows
        ]
        return sorted(items, key=lambda it: it.key)

    def delete_inbox(self, instance_id: str, keys: Iterable[str]) -> None:
        self._delete_rows(self.inbox, ({"PartitionKey": instance_id, "RowKey": k} for k in keys))
