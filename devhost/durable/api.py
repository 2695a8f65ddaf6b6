"""The Durable extension's HTTP management API (`/runtime/webhooks/durabletask/...`), served by devhost.

Paths and answers follow what the SDK's `DurableOrchestrationClient` builds and parses
(`start_new`, `get_status[_by/_all]`, `raise_event`, `terminate`, `purge_instance_history[_by]`)
and the extension's documented HTTP API (learn.microsoft.com: Durable Functions HTTP API).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from devhost.durable import history as h
from devhost.durable.history import EventType
from devhost.durable.store import Instance

if TYPE_CHECKING:
    from devhost.durable.engine import DurableEngine

Response = tuple[int, dict[str, str], bytes]
RUNNING_STATES = {"Pending", "Running", "ContinuedAsNew"}
_EVENT_NAMES = {int(t): "".join(p.capitalize() for p in t.name.split("_")) for t in EventType}
_EVENT_NAMES[int(EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED)] = "SubOrchestrationInstanceCompleted"
_EVENT_NAMES[int(EventType.SUB_ORCHESTRATION_INSTANCE_FAILED)] = "SubOrchestrationInstanceFailed"
_HIDDEN = {
    EventType.ORCHESTRATOR_STARTED,
    EventType.ORCHESTRATOR_COMPLETED,
    EventType.TASK_SCHEDULED,
    EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
}
_BAD_ID_CHARS = set("/\\#?")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(body).encode()


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _short_time(iso_text: str) -> str:
    return iso_text[:19] + "Z" if iso_text else iso_text


def _flag(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = {k.lower(): v for k, v in query.items()}.get(name.lower())
    return default if value is None else value.lower() in ("true", "1", "yes")


def body_to_json_text(body: bytes) -> str | None:
    """The input's JSON text. The SDK posts `json.dumps(value)` as a JSON string (encoded twice)."""
    if not body.strip():
        return None
    value = json.loads(body)
    if isinstance(value, str):
        try:
            json.loads(value)
            return value
        except ValueError:
            pass
    return json.dumps(value)


DEFAULT_PAGE = 100  # the extension's default page size for instance queries


class ManagementApi:
    def __init__(self, engine: DurableEngine) -> None:
        self.engine = engine
        self.store = engine.store
        self.hub = engine.task_hub

    # --- URLs ----------------------------------------------------------------------
    @property
    def webhook_base(self) -> str:
        return f"{self.engine.base_url}/runtime/webhooks/durabletask"

    def _qs(self) -> str:
        # As on Azure, the webhook URLs carry the extension's system key: whoever holds one can
        # terminate, purge or raise events on any instance, so the app must never hand them out.
        return f"taskHub={quote(self.hub)}&connection=Storage&code={quote(self.engine.system_key)}"

    def management_urls(self, instance_id: str) -> dict[str, str]:
        base, qs, iid = self.webhook_base, self._qs(), quote(instance_id, safe="")
        return {
            "id": instance_id,
            "statusQueryGetUri": f"{base}/instances/{iid}?{qs}",
            "sendEventPostUri": f"{base}/instances/{iid}/raiseEvent/{{eventName}}?{qs}",
            "terminatePostUri": f"{base}/instances/{iid}/terminate?reason={{text}}&{qs}",
            "rewindPostUri": f"{base}/instances/{iid}/rewind?reason={{text}}&{qs}",
            "purgeHistoryDeleteUri": f"{base}/instances/{iid}?{qs}",
            "restartPostUri": f"{base}/instances/{iid}/restart?{qs}",
            "suspendPostUri": f"{base}/instances/{iid}/suspend?reason={{text}}&{qs}",
            "resumePostUri": f"{base}/instances/{iid}/resume?reason={{text}}&{qs}",
        }

    def client_binding(self) -> str:
        """The durableClient binding value: what the extension hands the Python worker."""
        management = self.management_urls("INSTANCEID")
        management["id"] = "INSTANCEID"
        base, qs = self.webhook_base, self._qs()
        return json.dumps(
            {
                "taskHubName": self.hub,
                "creationUrls": {
                    "createNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?{qs}",
                    "createAndWaitOnNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}"
                    f"&pollingInterval={{intervalInSeconds}}&{qs}",
                },
                "managementUrls": management,
                "baseUrl": base,
                "requiredQueryStringParameters": qs,
                # The SDK's client calls the extension's local RPC endpoint, not the keyed webhooks.
                "rpcBaseUrl": self.engine.rpc_base_url or f"{base}/",
            }
        )

    # --- routing -------------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        method = method.upper()
        try:
            if parts[:1] == ["orchestrators"] and len(parts) in (2, 3) and method == "POST":
                return self.start(parts[1], parts[2] if len(parts) == 3 else None, body)
            if parts[:1] == ["instances"]:
                if len(parts) == 1:
                    return (
                        self.list(query, headers)
                        if method == "GET"
                        else (self.purge_by(query) if method == "DELETE" else self._not_allowed())
                    )
                iid = parts[1]
                if len(parts) == 2:
                    if method == "GET":
                        return self.status(iid, query)
                    if method == "DELETE":
                        return self.purge(iid)
                if len(parts) == 4 and parts[2] == "raiseEvent" and method == "POST":
                    return self.raise_event(iid, parts[3], body)
                if len(parts) == 3 and parts[2] == "terminate" and method == "POST":
                    return self.terminate(iid, query.get("reason"))
                if len(parts) == 3 and parts[2] in ("rewind", "suspend", "resume", "restart"):
                    return _json(501, {"Message": f"devhost does not implement {parts[2]}"})
        except json.JSONDecodeError:
            return _json(400, {"Message": "Only application/json request content is supported"})
        return _json(404, {"Message": f"no durable webhook at {path}"})

    @staticmethod
    def _not_allowed() -> Response:
        return _json(405, {"Message": "method not allowed"})

    # --- operations ----------------------------------------------------------------
    def start(self, name: str, instance_id: str | None, body: bytes) -> Response:
        if name not in self.engine.orchestrators:
            message = f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            return _json(
                400, {"Message": "One or more of the arguments submitted is incorrect", "ExceptionMessage": message}
            )
        instance_id = instance_id or uuid.uuid4().hex
        if len(instance_id) > 256 or any(c in _BAD_ID_CHARS or ord(c) < 32 for c in instance_id):
            return _json(
                400, {"Message": "invalid instance id", "ExceptionMessage": f"invalid instance id {instance_id!r}"}
            )
        input_text = body_to_json_text(body)
        now = h.iso(h.utc_now())
        new = Instance(instance_id, name, "Pending", input_text, created=now, updated=now, owner=self.engine.engine_id)
        existing = self.store.get_instance(instance_id)
        try:
            if existing is None:
                self.store.insert_instance(new)
            elif existing.status in RUNNING_STATES:
                return self._conflict(existing)
            else:  # a finished instance with this id is replaced, as the extension does by default
                self.store.purge(instance_id)
                self.store.insert_instance(new)
        except (ResourceExistsError, ResourceModifiedError):
            current = self.store.get_instance(instance_id)
            return self._conflict(current) if current else _json(409, {"Message": "instance id in use"})
        self.engine.log.info("orchestration %s (%s) scheduled", name, instance_id)
        self.engine.signal(instance_id)
        urls = self.management_urls(instance_id)
        return _json(202, urls, {"Location": urls["statusQueryGetUri"]})

    @staticmethod
    def _conflict(existing: Instance) -> Response:
        message = f"An Orchestration instance with the status {existing.status} already exists."
        return _json(409, {"Message": message, "ExceptionMessage": message})

    def status_json(
        self, inst: Instance, *, show_input: bool = True, show_history: bool = False, show_history_output: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": inst.name,
            "instanceId": inst.instance_id,
            "runtimeStatus": inst.status,
            "input": _loads(inst.input) if show_input else None,
            "customStatus": _loads(inst.custom_status),
            "output": _loads(inst.output),
            "createdTime": _short_time(inst.created),
            "lastUpdatedTime": _short_time(inst.updated),
        }
        if show_history:
            rows = self.store.load_history(inst.instance_id, inst.generation, inst.history_length)
            out["historyEvents"] = history_json([r.event for r in rows], show_history_output)
        return out

    def status(self, instance_id: str, query: Mapping[str, str]) -> Response:
        inst = self.store.get_instance(instance_id)
        if inst is None:
            return _json(404, f"No instance with ID '{instance_id}' found.")
        body = self.status_json(
            inst,
            show_input=_flag(query, "showInput", True),
            show_history=_flag(query, "showHistory"),
            show_history_output=_flag(query, "showHistoryOutput"),
        )
        if inst.status in RUNNING_STATES:
            location = self.management_urls(instance_id)["statusQueryGetUri"]
            return _json(202, body, {"Location": location, "Retry-After": "1"})
        if inst.status == "Failed" and _flag(query, "returnInternalServerErrorOnFailure"):
            return _json(500, body)
        return _json(200, body)

    def _matching(self, query: Mapping[str, str]) -> list[Instance]:
        statuses = {s for s in (query.get("runtimeStatus") or "").split(",") if s}
        start = query.get("createdTimeFrom")
        end = query.get("createdTimeTo")
        prefix = query.get("instanceIdPrefix")
        lo = h.parse_iso(start) if start else None
        hi = h.parse_iso(end) if end else None
        out = []
        for inst in self.store.list_instances(with_payloads=True):
            created = h.parse_iso(inst.created) if inst.created else datetime.min
            if statuses and inst.status not in statuses:
                continue
            if (lo and created < lo) or (hi and created > hi) or (prefix and not inst.instance_id.startswith(prefix)):
                continue
            out.append(inst)
        return sorted(out, key=lambda i: i.instance_id)

    def list(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Response:
        """One page of instances, as the Azure Storage provider answers: in instance-id order (the
        Instances table's PartitionKey), `top` or 100 per page, the rest behind `x-ms-continuation-token`
        (the extension's HTTP API reference, "Get all instances status"; the Python SDK's
        `get_status_all`/`get_status_by` send one GET and drop the token)."""
        found = self._matching(query)
        token = {k.lower(): v for k, v in headers.items()}.get("x-ms-continuation-token")
        after = base64.b64decode(token).decode() if token else ""
        top = int(query.get("top") or 0) or DEFAULT_PAGE
        rest = [i for i in found if i.instance_id > after]
        page = rest[:top]
        extra = {}
        if len(rest) > top:
            extra["x-ms-continuation-token"] = base64.b64encode(page[-1].instance_id.encode()).decode()
        show_input = _flag(query, "showInput", False)
        return _json(200, [self.status_json(i, show_input=show_input) for i in page], extra)

    def purge(self, instance_id: str) -> Response:
        if self.store.get_instance(instance_id) is None:
            return _json(404, {"instancesDeleted": 0})
        self.store.purge(instance_id)
        return _json(200, {"instancesDeleted": 1})

    def purge_by(self, query: Mapping[str, str]) -> Response:
        found = self._matching(query)
        for inst in found:
            self.store.purge(inst.instance_id)
        return _json(200 if found else 404, {"instancesDeleted": len(found)})

    def raise_event(self, instance_id: str, event_name: str, body: bytes) -> Response:
        inst = self.store.get_instance(instance_id)
        if inst is None:
            return _json(404, f"No instance with ID '{instance_id}' found.")
        if inst.terminal:
            return _json(410, f"Instance with ID {instance_id} is gone: either completed or failed")
        self.engine.deliver(instance_id, h.event_raised(event_name, body_to_json_text(body)))
        return 202, {}, b""

    def terminate(self, instance_id: str, reason: str | None) -> Response:
        inst = self.store.get_instance(instance_id)
        if inst is None:
            return _json(404, f"No instance with ID '{instance_id}' found.")
        if inst.terminal:
            return _json(410, f"Instance with ID {instance_id} is already {inst.status}")
        self.engine.deliver(instance_id, h.execution_terminated(reason))
        return 202, {}, b""


def history_json(events: list[dict[str, Any]], show_output: bool) -> list[dict[str, Any]]:
    """History as the extension's status API shows it: scheduling events folded into their results."""
    scheduled = {
        (e["EventType"], e["EventId"]): e
        for e in events
        if e["EventType"] in (EventType.TASK_SCHEDULED, EventType.SUB_ORCHESTRATION_INSTANCE_CREATED)
    }
    out = []
    for e in events:
        t = e["EventType"]
        if t in _HIDDEN:
            continue
        item: dict[str, Any] = {
            "EventType": _EVENT_NAMES.get(t, str(t)),
            "EventId": e["EventId"],
            "Timestamp": e["Timestamp"],
        }
        if t == EventType.EXECUTION_STARTED:
            item["FunctionName"] = e.get("Name")
            if show_output:
                item["Input"] = _loads(e.get("Input"))
        elif t in (
            EventType.TASK_COMPLETED,
            EventType.TASK_FAILED,
            EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED,
            EventType.SUB_ORCHESTRATION_INSTANCE_FAILED,
        ):
            kind = (
                EventType.TASK_SCHEDULED
                if t in (EventType.TASK_COMPLETED, EventType.TASK_FAILED)
                else EventType.SUB_ORCHESTRATION_INSTANCE_CREATED
            )
            origin = scheduled.get((kind, e["TaskScheduledId"]), {})
            item.update(
                TaskScheduledId=e["TaskScheduledId"],
                FunctionName=origin.get("Name"),
                ScheduledTime=origin.get("Timestamp"),
            )
            if origin.get("InstanceId"):
                item["InstanceId"] = origin["InstanceId"]
            if t in (EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_INSTANCE_FAILED):
                item["Reason"] = e.get("Reason")
                if show_output:
                    item["Details"] = e.get("Details")
            elif show_output:
                item["Result"] = _loads(e.get("Result"))
        elif t in (EventType.TIMER_CREATED, EventType.TIMER_FIRED):
            item["FireAt"] = e.get("FireAt")
            if t == EventType.TIMER_FIRED:
                item["TimerId"] = e.get("TimerId")
        elif t == EventType.EVENT_RAISED:
            item["Name"] = e.get("Name")
            if show_output:
                item["Input"] = _loads(e.get("Input"))
        elif t in (EventType.EXECUTION_COMPLETED, EventType.EXECUTION_FAILED):
            item["OrchestrationStatus"] = e.get("OrchestrationStatus")
            if show_output:
                item["Result"] = _loads(e.get("Result"))
        elif t == EventType.EXECUTION_TERMINATED:
            item["Reason"] = e.get("Input")
        out.append(item)
    return out
