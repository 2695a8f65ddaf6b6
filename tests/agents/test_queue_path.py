"""Azure Functions tools: messages on Azurite queues, the real function_app.py on devhost.

The agent service's side is played by the test: it puts tool calls on the input queues
(base64, as the service does) and reads replies from the output queues. The queue host
gets its own Azurite so the session's shared app (which holds no vault keys) does not
compete for the same queues; its tools charge through the shared app's proxy.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy, QueueClient

from agents.queue_tools import queue_names
from devhost.services import REPO_ROOT, Service, start_azurite, start_devhost
from tests.agents.conftest import AgentStack
from tests.conftest import AppStack, app_settings

pytestmark = pytest.mark.integration

APP_DIR: Path = REPO_ROOT


@dataclass
class QueueHost:
    stack: AgentStack
    host: Service
    azurite: Service
    billing: dict[str, Any]

    def queue(self, name: str) -> QueueClient:
        client = QueueClient.from_connection_string(
            self.azurite.extra["connection_string"],
            name,
            message_encode_policy=BinaryBase64EncodePolicy(),
            message_decode_policy=BinaryBase64DecodePolicy(),
        )
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        return client

    def send(self, tool: str, message: dict[str, Any] | bytes) -> None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.queue(queue_names(tool)[0]).send_message(body)

    def replies(self, tool: str, want: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait for `want` replies on the tool's output queue (returns what arrived by the deadline)."""
        out, deadline = [], time.monotonic() + timeout
        queue = self.queue(queue_names(tool)[1])
        while len(out) < want and time.monotonic() < deadline:
            for msg in queue.receive_messages(max_messages=32, visibility_timeout=60):
                out.append(json.loads(msg.content))
                queue.delete_message(msg)
            time.sleep(0.2)
        return out

    def poisoned(self, tool: str, timeout: float = 60) -> list[bytes]:
        deadline, queue = time.monotonic() + timeout, self.queue(queue_names(tool)[0] + "-poison")
        while time.monotonic() < deadline:
            found = [m.content for m in queue.peek_messages(max_messages=32)]
            if found:
                return found
            time.sleep(0.5)
        return []


@pytest.fixture(scope="module")
def queue_host(app_stack: AppStack, artifacts_dir: Path) -> Iterator[QueueHost]:
    stack = AgentStack(app_stack)
    billing, audit = stack.billing_key(), stack.audit_key()
    azurite = start_azurite(log_path=artifacts_dir / "azurite-agent-queues.log")
    settings = app_settings(
        azurite,
        app_stack.localstripe,
        SPENDGATE_PROXY_URL=stack.proxy_url,
        SPENDGATE_BILLING_KEY=billing["vault_key"],
        SPENDGATE_AUDIT_KEY=audit["vault_key"],
    )
    try:
        host = start_devhost(
            APP_DIR, settings, log_path=artifacts_dir / "devhost-agent-queues.log", ready_path="/api/health"
        )
    except BaseException:
        azurite.stop()
        raise
    yield QueueHost(stack, host, azurite, billing)
    host.stop()
    azurite.stop()


def test_a_queued_charge_gets_one_reply_and_a_malformed_message_is_poisoned(queue_host: QueueHost) -> None:
    stack = queue_host.stack
    customer = stack.new_customer()
    args = {"customer_id": customer, "amount_cents": 2900, "billing_period": "2026-06"}
    correlation = f"corr-{uuid.uuid4().hex[:8]}"

    queue_host.send("charge_stripe", b"this is not a tool call")  # starts the poison clock first
    queue_host.send("charge_stripe", {"CorrelationId": correlation, "function_args": args})
    [reply] = queue_host.replies("charge_stripe", 1)

    assert reply["CorrelationId"] == correlation
    charged = json.loads(reply["Value"])
    assert charged["status"] == "succeeded" and charged["replayed"] is False
    # The service delivers the call again (its own retry): replayed, not re-billed; the
    # older message shape (arguments beside CorrelationId) works for lookups.
    queue_host.send("charge_stripe", {"CorrelationId": correlation + "-again", "function_args": args})
    queue_host.send("get_charge_status", {"CorrelationId": correlation + "-status", "charge_id": charged["charge_id"]})
    [again] = queue_host.replies("charge_stripe", 1)
    [status] = queue_host.replies("get_charge_status", 1)
    assert again["CorrelationId"] == correlation + "-again" and json.loads(again["Value"])["replayed"] is True
    assert status["CorrelationId"] == correlation + "-status"
    assert json.loads(status["Value"])["status"] == "succeeded"

    assert queue_host.poisoned("charge_stripe") == [b"this is not a tool call"]
    assert queue_host.replies("charge_stripe", 1, timeout=1) == []  # nothing answered the malformed one
    [intent] = stack.payment_intents(customer)
    assert intent["id"] == charged["charge_id"]
    decisions = sorted(r["decision"] for r in stack.audit_rows(queue_host.billing["key_id"]))
    assert decisions == ["forwarded", "replayed"]  # the poisoned message never reached the proxy
