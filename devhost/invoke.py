"""Invoking a function the way the Functions host does: binding data in, results out.

devhost plays the host's part of the protocol and Microsoft's worker library does the
rest (`devhost.worker`): the host sends each input binding as `TypedData` — the HTTP
request, a queue message with its trigger metadata, the Durable extension's orchestration
context and activity input, the `durableClient` binding JSON — and gets back the
`$return` value and the output bindings, already encoded by `azure-functions`'
converters. After the function succeeds the host sends queue outputs; after a failure
nothing is sent.

What each extension sends is taken from the converters that read it (azure-functions
`http.py`, `queue.py`, `durable_functions.py`) and, for queue trigger metadata, from the
host's conversion of values to `TypedData` (strings as `string`, other values as JSON
text — azure-functions-host `GrpcMessageConversionExtensions.ToRpc`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devhost import protocol
from devhost.config import QueueOptions, resolve_binding_expression, storage_connection_string
from devhost.loader import FunctionIndex, FunctionInfo
from devhost.queue_io import QueueClients, queue_messages
from devhost.worker import InvocationResult, WorkerError

log = logging.getLogger("devhost")

_DURABLE_TRIGGERS = ("orchestrationTrigger", "activityTrigger", "entityTrigger")


@dataclass(frozen=True)
class HttpRequestData:
    """An HTTP request as the host forwards it to the worker."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    route_params: Mapping[str, str]
    body: bytes

    def typed_data(self) -> protocol.TypedData:
        return protocol.TypedData(
            http=protocol.RpcHttp(
                method=self.method,
                url=self.url,
                headers=dict(self.headers),
                body=protocol.TypedData(bytes=self.body) if self.body else protocol.TypedData(),
                params=dict(self.route_params),
                query=dict(self.query),
            )
        )


@dataclass(frozen=True)
class QueueMessageData:
    """A queue message as the queues extension hands it to the worker (body already base64-decoded)."""

    id: str
    body: bytes
    dequeue_count: int
    insertion_time: datetime | None = None
    expiration_time: datetime | None = None
    next_visible_time: datetime | None = None
    pop_receipt: str | None = None

    def typed_data(self) -> protocol.TypedData:
        try:
            return protocol.TypedData(string=self.body.decode("utf-8"))
        except UnicodeDecodeError:
            return protocol.TypedData(bytes=self.body)

    def trigger_metadata(self) -> dict[str, protocol.TypedData]:
        meta = {"Id": protocol.TypedData(string=self.id), "DequeueCount": _json(self.dequeue_count)}
        for name, value in (
            ("InsertionTime", self.insertion_time),
            ("ExpirationTime", self.expiration_time),
            ("NextVisibleTime", self.next_visible_time),
        ):
            if value is not None:
                meta[name] = _json(value.isoformat())
        if self.pop_receipt:
            meta["PopReceipt"] = protocol.TypedData(string=self.pop_receipt)
        return meta


def _json(value: Any) -> protocol.TypedData:
    return protocol.TypedData(json=json.dumps(value))


class FunctionFailed(RuntimeError):
    """The function (or the worker's binding of it) failed; `message` is the worker's `Type: text`."""

    def __init__(self, function: str, error: WorkerError) -> None:
        super().__init__(f"function {function} failed: {error.message}")
        self.message = error.message
        self.stack_trace = error.stack_trace


@dataclass
class Invocation:
    """What one invocation returned and how long it took."""

    function: str
    invocation_id: str
    result: InvocationResult
    duration_ms: float
    sent: dict[str, int] = field(default_factory=dict)


class Invoker:
    """Sends invocations to the worker and queue outputs to storage.

    `client_binding` yields the durableClient binding string (the engine's
    `client_binding`); functions with such a binding fail clearly without it.
    """

    def __init__(
        self,
        index: FunctionIndex,
        *,
        client_binding: Callable[[], str] | None = None,
        queue_options: QueueOptions | None = None,
        queues: QueueClients | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.worker = index.worker
        self.client_binding = client_binding
        self.queue_options = queue_options or QueueOptions()
        self.queues = queues or QueueClients()
        self.environ = environ

    def invoke(
        self,
        fn: FunctionInfo,
        trigger: protocol.TypedData,
        *,
        trigger_metadata: Mapping[str, protocol.TypedData] | None = None,
        invocation_id: str | None = None,
    ) -> Invocation:
        """Run `fn` with `trigger` as its trigger binding; raises `FunctionFailed` when it fails."""
        invocation_id = invocation_id or str(uuid.uuid4())
        started = _now_ms()
        inputs = {fn.trigger["name"]: trigger}
        for binding in fn.bindings:
            if binding is fn.trigger or str(binding.get("direction", "")).upper() != "IN":
                continue
            if binding.get("type") != "durableClient":
                raise RuntimeError(f"function {fn.name}: input binding type {binding.get('type')!r} is not supported")
            if self.client_binding is None:
                raise RuntimeError(f"function {fn.name} has a durableClient binding but no durable engine runs")
            inputs[binding["name"]] = protocol.TypedData(string=self.client_binding())
        try:
            result = self.worker.invoke(
                fn.function_id,
                inputs,
                trigger_metadata=trigger_metadata,
                invocation_id=invocation_id,
                function_name=fn.name,
            )
        except WorkerError as exc:
            raise FunctionFailed(fn.name, exc) from None
        sent = self._send_outputs(fn, result)
        return Invocation(fn.name, invocation_id, result, _now_ms() - started, sent)

    def _send_outputs(self, fn: FunctionInfo, result: InvocationResult) -> dict[str, int]:
        sent: dict[str, int] = {}
        for binding in fn.bindings_of("queue", "OUT"):
            name = binding["name"]
            data = result.return_value if name == "$return" else result.outputs.get(name)
            bodies = queue_messages(data)
            if not bodies:
                continue
            queue_name = resolve_binding_expression(str(binding["queueName"]), self.environ).lower()
            conn = storage_connection_string(binding.get("connection"), self.environ)
            sent[queue_name] = self.queues.send(conn, queue_name, bodies, self.queue_options.message_encoding)
        for binding in fn.bindings:
            direction = str(binding.get("direction", "")).upper()
            if direction == "OUT" and binding.get("type") not in ("queue", "http"):
                log.warning("function %s: output binding type %r is not run by devhost", fn.name, binding.get("type"))
        return sent


def uses_durable(fn: FunctionInfo) -> bool:
    """Does this function need the durable engine (durable trigger or durableClient binding)?"""
    return fn.trigger_type in _DURABLE_TRIGGERS or any(b.get("type") == "durableClient" for b in fn.bindings)


def _now_ms() -> float:
    return time.perf_counter() * 1000.0


def log_invocation(
    function: str, trigger: str, outcome: str, duration_ms: float, *, instance_id: str | None = None, detail: str = ""
) -> None:
    """The one log line per invocation: name, trigger, instance, duration, outcome (no bodies, no keys)."""
    instance = f" instance={instance_id}" if instance_id else ""
    extra = f" {detail}" if detail else ""
    log.info("%s (%s)%s -> %s in %.0f ms%s", function, trigger, instance, outcome, duration_ms, extra)


def sent_summary(sent: Mapping[str, int]) -> str:
    """`sent queue-a:2 queue-b:1` for the invocation log line ("" when nothing was sent)."""
    return "sent " + " ".join(f"{q}:{n}" for q, n in sent.items()) if sent else ""
