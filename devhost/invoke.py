"""Calling a user function with its bindings, as the Python worker does.

Parameters are filled by binding name: the trigger value, a `durableClient` binding
(the JSON string from the durable engine; `df.DFApp` turns it into a client), an
`azure.functions.Out` per queue output binding, and `context` (a `func.Context`) if
the function asks for it. After the function succeeds, queue outputs (the `Out`
values and a queue `$return`) are sent; after a failure nothing is sent.

Sync functions run on the caller's thread (HTTP request thread, queue worker thread).
Async functions run on one process-wide event loop in its own thread, as the
worker's main loop: the Durable SDK keeps one aiohttp session bound to the loop it
was created on, so one loop for all async functions is what keeps it working. That
loop never serves HTTP itself, so an async function calling back into this host
(the durable client does) cannot deadlock it; an async function that blocks stalls
other async functions, exactly as on Azure.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
import typing
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from devhost.config import QueueOptions, resolve_binding_expression, storage_connection_string
from devhost.loader import FunctionInfo
from devhost.queue_io import QueueClients, output_messages

log = logging.getLogger("devhost")

_DURABLE_TRIGGERS = ("orchestrationTrigger", "activityTrigger", "entityTrigger")


class FunctionLoop:
    """An asyncio event loop in a daemon thread that runs async user functions."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="devhost-function-loop", daemon=True)
        self._thread.start()

    def run(self, coro: typing.Coroutine[Any, Any, Any]) -> Any:
        """Run `coro` on the loop and wait for its result (never call from the loop's own thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FunctionLoop.run called from inside the function loop (would deadlock)")
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


_shared_loop: FunctionLoop | None = None
_shared_lock = threading.Lock()


def shared_loop() -> FunctionLoop:
    """The process's function loop (started on first use)."""
    global _shared_loop
    with _shared_lock:
        if _shared_loop is None:
            _shared_loop = FunctionLoop()
        return _shared_loop


def call_user_function(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """Call a user function (sync inline, async on the shared loop) and return its result."""
    if inspect.iscoroutinefunction(fn):
        return shared_loop().run(fn(**kwargs))
    result = fn(**kwargs)
    if inspect.isawaitable(result):  # a sync wrapper that hands back a coroutine
        return shared_loop().run(_await(result))
    return result


async def _await(awaitable: typing.Awaitable[Any]) -> Any:
    return await awaitable


class OutValue(func.Out[Any]):
    """The value holder the worker passes for an output binding."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext:
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class InvocationContext(func.Context):
    """`func.Context` for one invocation."""

    _tls = threading.local()

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._trace = _TraceContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return None


def _annotation(fn: Callable[..., Any], param: str) -> Any:
    """The resolved type annotation of `param` (string annotations evaluated when possible)."""
    try:
        return typing.get_type_hints(fn).get(param)
    except Exception:  # unresolvable forward refs: fall back to the raw annotation
        p = inspect.signature(fn).parameters.get(param)
        return p.annotation if p is not None else None


def _convert_queue_message(msg: func.QueueMessage, annotation: Any) -> Any:
    """A queue trigger arrives as the annotated type: QueueMessage (default), str or bytes."""
    if annotation in (str, "str"):
        return msg.get_body().decode("utf-8")
    if annotation in (bytes, "bytes"):
        return msg.get_body()
    return msg


@dataclass
class Invocation:
    """What one invocation returned and how long it took."""

    function: str
    invocation_id: str
    result: Any
    duration_ms: float
    sent: dict[str, int] = field(default_factory=dict)


class Invoker:
    """Binds and calls user functions; sends queue outputs after success.

    `client_binding` yields the durableClient binding string (the engine's
    `client_binding`); functions with such a binding fail clearly without it.
    """

    def __init__(
        self,
        *,
        client_binding: Callable[[], str] | None = None,
        queue_options: QueueOptions | None = None,
        queues: QueueClients | None = None,
        environ: Mapping[str, str] = os.environ,
        function_directory: str = "",
    ) -> None:
        self.client_binding = client_binding
        self.queue_options = queue_options or QueueOptions()
        self.queues = queues or QueueClients()
        self.environ = environ
        self.function_directory = function_directory

    def invoke(self, fn: FunctionInfo, trigger_value: Any, *, invocation_id: str | None = None) -> Invocation:
        """Call `fn` with `trigger_value` for its trigger binding; raises what the function raises."""
        invocation_id = invocation_id or str(uuid.uuid4())
        started = _now_ms()
        kwargs, outs = self._bind(fn, trigger_value, invocation_id)
        result = call_user_function(fn.user_function, kwargs)
        sent = self._send_outputs(fn, outs, result)
        return Invocation(fn.name, invocation_id, result, _now_ms() - started, sent)

    def _bind(
        self, fn: FunctionInfo, trigger_value: Any, invocation_id: str
    ) -> tuple[dict[str, Any], dict[str, OutValue]]:
        kwargs: dict[str, Any] = {}
        outs: dict[str, OutValue] = {}
        trigger_name = fn.trigger["name"]
        for binding in fn.bindings:
            name, type_ = binding["name"], binding.get("type")
            direction = str(binding.get("direction", "")).upper()
            if binding is fn.trigger or name == trigger_name:
                value = trigger_value
                if isinstance(value, func.QueueMessage):
                    value = _convert_queue_message(value, _annotation(fn.user_function, name))
                kwargs[name] = value
            elif name == "$return":
                continue
            elif type_ == "durableClient":
                if self.client_binding is None:
                    raise RuntimeError(f"function {fn.name} has a durableClient binding but no durable engine runs")
                kwargs[name] = self.client_binding()
            elif direction == "OUT" and type_ == "queue":
                outs[name] = kwargs[name] = OutValue()
            elif direction == "OUT":
                kwargs[name] = outs[name] = OutValue()
                log.warning("function %s: output binding type %r is not supported by devhost; ignored", fn.name, type_)
            else:
                raise RuntimeError(f"function {fn.name}: input binding type {type_!r} is not supported by devhost")
        params = inspect.signature(fn.user_function).parameters
        if "context" in params and "context" not in kwargs:
            kwargs["context"] = InvocationContext(invocation_id, fn.name, self.function_directory)
        return kwargs, outs

    def _send_outputs(self, fn: FunctionInfo, outs: Mapping[str, OutValue], result: Any) -> dict[str, int]:
        sent: dict[str, int] = {}
        for binding in fn.bindings:
            if binding.get("type") != "queue" or str(binding.get("direction", "")).upper() != "OUT":
                continue
            name = binding["name"]
            value = result if name == "$return" else outs[name].get()
            bodies = output_messages(value)
            if not bodies:
                continue
            queue_name = resolve_binding_expression(str(binding["queueName"]), self.environ).lower()
            conn = storage_connection_string(binding.get("connection"), self.environ)
            sent[queue_name] = self.queues.send(conn, queue_name, bodies, self.queue_options.message_encoding)
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
