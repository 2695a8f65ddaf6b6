"""Microsoft's Python worker, run in-process: indexing, function load and every invocation.

On Azure, Python 3.13 apps run the worker as a library the app pins in requirements.txt
(`azure-functions-runtime`). The Functions host talks to it over gRPC; devhost calls the
same library's handlers directly with the protocol's messages (`devhost.protocol`):

- `worker_init_request` imports `function_app.py` and indexes it (the load checks run
  here: a bad annotation, an unknown binding, two apps — the worker's `FunctionLoadError`);
- `functions_metadata_request` reports each function's bindings (`raw_bindings`, the
  function.json JSON), which is all devhost knows about a function;
- `function_load_request` per function;
- `invocation_request` per call: the library decodes the inputs with `azure-functions`'
  converters, runs async functions on its own event loop and sync functions on its
  thread pool (`PYTHON_THREADPOOL_THREAD_COUNT`), and encodes the result.

All of that runs on one dispatcher event loop in its own thread, as in the worker
process: the handlers are coroutines awaited there, so an async function that blocks
stalls every other invocation in this process, exactly as on Azure. To make that visible,
`DEVHOST_LOOP_BLOCK_WARN_MS` turns on asyncio's slow-callback check for the loop: any step
of an invocation that holds the loop longer is logged as `Executing <Task … name='invoke
<function>' …> took N seconds` (logger `asyncio`). The library keeps its registry in
module globals, so one process hosts one app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure_functions_runtime as runtime

from devhost import protocol

log = logging.getLogger("devhost")

# The library (logger "azure.functions") logs every invocation at INFO ("Function name: …") and its indexing summary.
logging.getLogger("azure.functions").setLevel(logging.WARNING)


class WorkerError(RuntimeError):
    """The worker answered Failure: its own message (`Type: text`) and stack trace."""

    def __init__(self, message: str, stack_trace: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stack_trace = stack_trace


@dataclass(frozen=True)
class LoadedFunction:
    """A function as the worker reported it: id, name and its bindings (function.json shape)."""

    name: str
    function_id: str
    bindings: list[dict[str, Any]]


@dataclass
class InvocationResult:
    """The worker's answer to one invocation: the `$return` value and the output bindings."""

    return_value: protocol.TypedData | None
    outputs: dict[str, protocol.TypedData]


class Worker:
    """The worker library on its dispatcher loop; `start()` indexes and loads, `invoke()` calls."""

    def __init__(self, app_dir: Path, *, script_file: str = "function_app.py") -> None:
        self.app_dir = app_dir.resolve()
        self.script_file = script_file
        self._loop = asyncio.new_event_loop()
        warn_ms = os.environ.get("DEVHOST_LOOP_BLOCK_WARN_MS")
        if warn_ms:
            self._loop.set_debug(True)
            self._loop.slow_callback_duration = int(warn_ms) / 1000.0
        self._thread = threading.Thread(target=self._loop.run_forever, name="worker-dispatcher", daemon=True)
        self._thread.start()

    def start(self) -> list[LoadedFunction]:
        """Init (imports and indexes the app), metadata, then load each function; raise `WorkerError` on failure."""
        if str(self.app_dir) not in sys.path:
            sys.path.insert(0, str(self.app_dir))  # the host starts the worker in the app's directory
        runtime.start_threadpool_executor()
        init = self._run(
            runtime.worker_init_request(
                self._message(
                    worker_init_request=protocol.WorkerInitRequest(
                        host_version="4",
                        function_app_directory=str(self.app_dir),
                        worker_directory=str(Path(runtime.__file__).parent),
                    )
                )
            )
        )
        _raise_on_failure(init.result)
        metadata = self._run(runtime.functions_metadata_request(self._message()))
        _raise_on_failure(metadata.result)
        loaded = []
        for meta in metadata.function_metadata_results or []:
            load = self._run(
                runtime.function_load_request(
                    self._message(
                        function_load_request=protocol.FunctionLoadRequest(function_id=meta.function_id, metadata=meta)
                    )
                )
            )
            _raise_on_failure(load.result)
            bindings = [json.loads(raw) for raw in meta.raw_bindings]
            loaded.append(LoadedFunction(meta.name, meta.function_id, bindings))
        return loaded

    def invoke(
        self,
        function_id: str,
        inputs: Mapping[str, protocol.TypedData],
        *,
        trigger_metadata: Mapping[str, protocol.TypedData] | None = None,
        invocation_id: str | None = None,
        retry_count: int = 0,
        function_name: str = "",
    ) -> InvocationResult:
        """One invocation request; returns the encoded results or raises `WorkerError` with the worker's message."""
        request = protocol.InvocationRequest(
            invocation_id=invocation_id or str(uuid.uuid4()),
            function_id=function_id,
            input_data=[protocol.ParameterBinding(name=name, data=data) for name, data in inputs.items()],
            trigger_metadata=dict(trigger_metadata or {}),
            trace_context=protocol.RpcTraceContext(trace_parent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"),
            retry_context=protocol.RetryContext(retry_count=retry_count),
        )
        response = self._run(
            runtime.invocation_request(self._message(invocation_request=request)), name=f"invoke {function_name}"
        )
        _raise_on_failure(response.result)
        outputs = {b.name: b.data for b in response.output_data if b.data is not None}
        return InvocationResult(response.return_value, outputs)

    def stop(self) -> None:
        runtime.stop_threadpool_executor()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _message(self, **request: Any) -> protocol.HostRequest:
        return protocol.HostRequest(
            protocol.StreamingMessage(request_id=str(uuid.uuid4()), **request),
            {"host": "127.0.0.1", "protos": protocol},
        )

    def _run(self, coro: Coroutine[Any, Any, Any], name: str = "worker request") -> Any:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a worker request was sent from the dispatcher loop itself (would deadlock)")
        return asyncio.run_coroutine_threadsafe(_named(coro, name), self._loop).result()


async def _named(coro: Coroutine[Any, Any, Any], name: str) -> Any:
    """Run `coro` in a task named after what it does, so a slow-callback warning says which function held the loop."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)
    return await coro


def _raise_on_failure(result: protocol.StatusResult | None) -> None:
    if result is None or result.status != protocol.StatusResult.Success:
        exc = result.exception if result is not None else None
        raise WorkerError(exc.message if exc else "the worker answered without a status", exc.stack_trace if exc else "")


# --- the host's side of the bindings: what the extensions send, and what comes back -------


def json_data(text: str) -> protocol.TypedData:
    return protocol.TypedData(json=text)


def string_data(text: str) -> protocol.TypedData:
    return protocol.TypedData(string=text)


def typed_value(data: protocol.TypedData | None) -> Any:
    """A returned TypedData as Python: text for string/json, bytes, numbers; None when unset."""
    if data is None:
        return None
    kind = data.WhichOneof("data")
    return None if kind is None else getattr(data, kind)
