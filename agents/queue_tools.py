"""The tools as Azure Functions tools: Foundry calls them through Storage queues.

For an ``azure_function`` tool the agent service puts a message on the tool's input
queue and waits for a reply with the same ``CorrelationId`` on its output queue. One
queue pair per tool (`queue_names`), both on the app's own storage (`AzureWebJobsStorage`),
named from the app setting ``SPENDGATE_TOOL_QUEUE_PREFIX`` (default ``spendgate-tool``):
``<prefix>-charge-stripe-input`` and so on. The triggers read the same setting as a binding
expression (``%SPENDGATE_TOOL_QUEUE_PREFIX%``), so definitions and triggers cannot disagree.
`agents.queue_agents` defines agents that use them.

Input (Microsoft's docs; older samples put the arguments beside ``CorrelationId`` —
both are accepted)::

    {"CorrelationId": "...", "function_args": {"customer_id": "cus_1", ...}}
    {"CorrelationId": "...", "customer_id": "cus_1", ...}

Reply, through the queue output binding: ``{"Value": "<tool output JSON>", "CorrelationId": "..."}``.

A message that is not a JSON object with a ``CorrelationId`` cannot be answered; the
trigger raises, the host retries it `maxDequeueCount` times (host.json) and then moves it
to ``<input queue>-poison``. Nothing is charged for it. Bad *arguments* with a
correlation id are answered with an ``invalid_arguments`` error, so the model can fix them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from agents import messages
from core.settings import TOOL_QUEUE_PREFIX, Settings, get_settings

log = logging.getLogger(__name__)

STORAGE_CONNECTION = "AzureWebJobsStorage"
_QUEUE_STEMS = {
    "charge_stripe": "charge-stripe",
    "get_charge_status": "get-charge-status",
    "list_customer_charges": "list-customer-charges",
}


class MalformedToolMessage(ValueError):
    """A queue message that cannot be answered (no JSON object, no CorrelationId)."""


def queue_names(tool_name: str, settings: Settings | None = None) -> tuple[str, str]:
    """(input queue, output queue) of a tool under the configured prefix; lowercase letters, digits, hyphens."""
    prefix = (settings or get_settings()).tool_queue_prefix
    stem = f"{prefix}-{_QUEUE_STEMS[tool_name]}"
    return f"{stem}-input", f"{stem}-output"


def _binding(tool_name: str, direction: str) -> str:
    """The trigger's queue name: the prefix as an app-setting binding expression, resolved by the host."""
    return f"%{TOOL_QUEUE_PREFIX}%-{_QUEUE_STEMS[tool_name]}-{direction}"


@dataclass(frozen=True)
class ToolRequest:
    correlation_id: str
    arguments: dict[str, Any] | None  # None: present but not a JSON object


def parse_tool_message(body: bytes | str) -> ToolRequest:
    """Read either message shape; raises `MalformedToolMessage` for anything unanswerable."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedToolMessage(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise MalformedToolMessage("not a JSON object")
    correlation_id = message.get("CorrelationId")
    if not isinstance(correlation_id, str) or not correlation_id.strip():
        raise MalformedToolMessage("no CorrelationId")
    if "function_args" in message:
        arguments = message["function_args"]
        if isinstance(arguments, str):  # some senders double-encode the arguments
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
    else:
        arguments = {k: v for k, v in message.items() if k != "CorrelationId"}
    return ToolRequest(correlation_id, arguments if isinstance(arguments, dict) else None)


def handle_tool_message(tool_name: str, body: bytes | str, tools_factory: Callable[[], Any]) -> str:
    """Run one queued tool call; returns the reply message (raises `MalformedToolMessage`)."""
    request = parse_tool_message(body)
    if request.arguments is None:
        output = messages.error_output("invalid_arguments", "function_args must be a JSON object. Nothing was done.")
    else:
        try:
            tools = tools_factory()
        except Exception as exc:  # refuse to run, but answer: the agent is waiting for a reply
            log.error("agent tools are not configured: %s", exc)
            output = messages.error_output("configuration_error", str(exc))
        else:
            output = tools.call(tool_name, request.arguments)
    return json.dumps({"Value": output, "CorrelationId": request.correlation_id})


# --- triggers (thin: decode, call handle_tool_message, write the reply) --------------------
bp = func.Blueprint()


def _default_tools() -> Any:
    from agents.tools import default_tools  # imported on first message, not when the app loads

    return default_tools()


def _answer(tool_name: str, msg: func.QueueMessage, reply: func.Out[str]) -> None:
    try:
        reply.set(handle_tool_message(tool_name, msg.get_body(), _default_tools))
    except MalformedToolMessage as exc:
        log.warning("unanswerable %s message %s (dequeue %s): %s", tool_name, msg.id, msg.dequeue_count, exc)
        raise


@bp.function_name("agent_tool_charge_stripe")
@bp.queue_trigger(arg_name="msg", queue_name=_binding("charge_stripe", "input"), connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="reply", queue_name=_binding("charge_stripe", "output"), connection=STORAGE_CONNECTION)
def agent_tool_charge_stripe(msg: func.QueueMessage, reply: func.Out[str]) -> None:
    _answer("charge_stripe", msg, reply)


@bp.function_name("agent_tool_get_charge_status")
@bp.queue_trigger(arg_name="msg", queue_name=_binding("get_charge_status", "input"), connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="reply", queue_name=_binding("get_charge_status", "output"), connection=STORAGE_CONNECTION)
def agent_tool_get_charge_status(msg: func.QueueMessage, reply: func.Out[str]) -> None:
    _answer("get_charge_status", msg, reply)


@bp.function_name("agent_tool_list_customer_charges")
@bp.queue_trigger(arg_name="msg", queue_name=_binding("list_customer_charges", "input"), connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="reply", queue_name=_binding("list_customer_charges", "output"), connection=STORAGE_CONNECTION)
def agent_tool_list_customer_charges(msg: func.QueueMessage, reply: func.Out[str]) -> None:
    _answer("list_customer_charges", msg, reply)
