"""Calling user code the way the Python worker does: orchestrators through the SDK's handle, activities directly."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from devhost.invoke import call_user_function
from devhost.loader import FunctionInfo

_OUT_OF_PROC_MARKER = "\n\n$OutOfProcData$:"


@dataclass
class OrchestratorResult:
    """The SDK's orchestrator state (`isDone`, cumulative `actions`, `output`, `customStatus`) and any error."""

    state: dict[str, Any]
    error: str | None


def run_orchestrator(fn: FunctionInfo, context: dict[str, Any]) -> OrchestratorResult:
    """One episode: the SDK handle takes the context JSON and returns the state JSON.

    When the orchestrator raises, the SDK raises too, with the state JSON appended after
    `$OutOfProcData$:` (the out-of-proc error schema the extension parses); so do we.
    """
    try:
        raw = fn.user_function(json.dumps(context))
    except Exception as exc:
        text = str(exc)
        if _OUT_OF_PROC_MARKER in text:
            message, _, state_json = text.partition(_OUT_OF_PROC_MARKER)
            state = json.loads(state_json)
            return OrchestratorResult(state, state.get("error") or message)
        return OrchestratorResult({"isDone": False, "actions": []}, f"{type(exc).__name__}: {exc}")
    return OrchestratorResult(json.loads(raw), None)


@dataclass
class ActivityResult:
    ok: bool
    result_text: str | None = None  # JSON text, as the worker encodes it
    reason: str = ""
    details: str = ""


def run_activity(fn: FunctionInfo, input_text: str | None) -> ActivityResult:
    """Decode the input and encode the output with the worker's own ActivityTrigger converter."""
    try:
        value = ActivityTriggerConverter.decode(
            meta.Datum(input_text if input_text is not None else "null", "json"), trigger_metadata=None
        )
        outcome = call_user_function(fn.user_function, {fn.trigger["name"]: value})  # async on the shared loop
        encoded = ActivityTriggerConverter.encode(outcome, expected_type=None)
        return ActivityResult(True, str(encoded.value))
    except Exception as exc:
        details = "".join(traceback.format_exception(exc))[-4000:]
        return ActivityResult(
            False, reason=f"Activity function '{fn.name}' failed: {type(exc).__name__}: {exc}", details=details
        )

