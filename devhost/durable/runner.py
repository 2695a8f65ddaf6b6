"""Calling orchestrators and activities through the worker, as the Durable extension does.

The extension sends an orchestrator its context JSON as the trigger's `string` data and
reads back the state JSON the SDK returns (`OrchestrationTriggerConverter` encodes it as
`json`); it sends an activity its input as JSON text and reads back the JSON text that
`ActivityTriggerConverter` encoded (custom classes travel as
`{"__class__", "__module__", "__data__"}`). Both go through Microsoft's worker library
(`devhost.worker`), so sync activities run on its thread pool and async ones on its loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from devhost import protocol
from devhost.loader import FunctionInfo
from devhost.worker import Worker, WorkerError, typed_value

_OUT_OF_PROC_MARKER = "\n\n$OutOfProcData$:"


@dataclass
class OrchestratorResult:
    """The SDK's orchestrator state (`isDone`, cumulative `actions`, `output`, `customStatus`) and any error."""

    state: dict[str, Any]
    error: str | None


def run_orchestrator(worker: Worker, fn: FunctionInfo, context: dict[str, Any]) -> OrchestratorResult:
    """One episode: the SDK handle takes the context JSON and returns the state JSON.

    When the orchestrator raises, the SDK raises too, with the state JSON appended after
    `$OutOfProcData$:` (the out-of-proc error schema the extension parses from the
    worker's failure message); so do we.
    """
    try:
        result = worker.invoke(
            fn.function_id,
            {fn.trigger["name"]: protocol.TypedData(string=json.dumps(context))},
            function_name=fn.name,
        )
    except WorkerError as exc:
        text = exc.message
        if _OUT_OF_PROC_MARKER in text:
            message, _, state_json = text.partition(_OUT_OF_PROC_MARKER)
            state = json.loads(state_json)
            return OrchestratorResult(state, state.get("error") or message)
        return OrchestratorResult({"isDone": False, "actions": []}, text)
    return OrchestratorResult(json.loads(typed_value(result.return_value)), None)


@dataclass
class ActivityResult:
    ok: bool
    result_text: str | None = None  # JSON text, as the worker encodes it
    reason: str = ""
    details: str = ""


def run_activity(worker: Worker, fn: FunctionInfo, input_text: str | None) -> ActivityResult:
    """Send the input as JSON text; the worker decodes it and encodes the output with ActivityTriggerConverter."""
    data = protocol.TypedData(json=input_text if input_text is not None else "null")
    try:
        result = worker.invoke(fn.function_id, {fn.trigger["name"]: data}, function_name=fn.name)
    except WorkerError as exc:
        return ActivityResult(
            False, reason=f"Activity function '{fn.name}' failed: {exc.message}", details=exc.stack_trace[-4000:]
        )
    value = typed_value(result.return_value)
    return ActivityResult(True, "null" if value is None else str(value))
