"""Queue tool messages: both shapes accepted; unanswerable ones raise (→ poison); replies echo CorrelationId."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from agents.queue_tools import MalformedToolMessage, handle_tool_message, parse_tool_message, queue_names
from agents.tools import TOOL_NAMES


class RecordingTools:
    """Stands in for BillingTools in these parsing tests (the real path is in test_queue_path)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Mapping[str, Any]]] = []

    def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        self.calls.append((name, arguments))
        return json.dumps({"ok": True})


ARGS = {"customer_id": "cus_1", "amount_cents": 2900, "billing_period": "2026-06"}


@pytest.mark.parametrize(
    "message",
    [
        {"CorrelationId": "c-1", "function_args": ARGS},
        {"CorrelationId": "c-1", **ARGS},
        {"CorrelationId": "c-1", "function_args": json.dumps(ARGS)},
    ],
)
def test_both_message_shapes_reach_the_tool_and_the_reply_echoes_the_correlation_id(message: dict[str, Any]) -> None:
    tools = RecordingTools()
    reply = json.loads(handle_tool_message("charge_stripe", json.dumps(message).encode(), lambda: tools))
    assert tools.calls == [("charge_stripe", ARGS)]
    assert reply == {"Value": json.dumps({"ok": True}), "CorrelationId": "c-1"}


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"function_args": {}}', b'{"CorrelationId": ""}', b'{"CorrelationId": 7}', b"\xff\xfe"],
)
def test_unanswerable_messages_raise_so_the_host_poisons_them(body: bytes) -> None:
    tools = RecordingTools()
    with pytest.raises(MalformedToolMessage):
        handle_tool_message("charge_stripe", body, lambda: tools)
    assert tools.calls == []


def test_arguments_that_are_not_an_object_are_answered_with_an_error() -> None:
    tools = RecordingTools()
    reply = json.loads(
        handle_tool_message("charge_stripe", b'{"CorrelationId": "c-2", "function_args": [1]}', lambda: tools)
    )
    assert reply["CorrelationId"] == "c-2" and json.loads(reply["Value"])["error"] == "invalid_arguments"
    assert tools.calls == []


def test_unconfigured_tools_answer_with_a_stop_instead_of_leaving_the_agent_waiting() -> None:
    def broken() -> RecordingTools:
        raise ValueError("SPENDGATE_BILLING_KEY holds a raw Stripe key")

    reply = json.loads(handle_tool_message("charge_stripe", json.dumps({"CorrelationId": "c-3", **ARGS}), broken))
    value = json.loads(reply["Value"])
    assert value["error"] == "configuration_error" and value["stop"] is True


def test_queue_names_are_valid_storage_queue_names() -> None:
    names = [q for tool in TOOL_NAMES for q in queue_names(tool)]
    assert len(set(names)) == 6
    for name in names:
        assert 3 <= len(name + "-poison") <= 63 and name.replace("-", "").isalnum() and name == name.lower()
    assert parse_tool_message(b'{"CorrelationId": "x"}').arguments == {}
