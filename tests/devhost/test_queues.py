"""devhost running queue triggers against real Azurite queues (tests/devhost/apps/queue_app)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy, QueueClient

from devhost.services import Service, start_devhost
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

APP_DIR = Path(__file__).parent / "apps" / "queue_app"
MAX_DEQUEUE = 3  # queue_app/host.json


@dataclass
class QueueApp:
    devhost: Service
    connection_string: str
    work_queue: str
    result_queue: str
    attempt_log: Path

    def queue(self, name: str, *, base64: bool = True) -> QueueClient:
        policies: dict[str, Any] = (
            {"message_encode_policy": BinaryBase64EncodePolicy(), "message_decode_policy": BinaryBase64DecodePolicy()}
            if base64
            else {}
        )
        return QueueClient.from_connection_string(self.connection_string, name, **policies)

    def attempts(self, body: str) -> list[dict[str, Any]]:
        if not self.attempt_log.exists():
            return []
        rows = [json.loads(line) for line in self.attempt_log.read_text().splitlines() if line]
        return [r for r in rows if r["body"] == body]


@pytest.fixture(scope="module")
def queue_app(azurite: Service, artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueApp]:
    suffix = uuid.uuid4().hex[:8]
    app = QueueApp(
        devhost=None,  # type: ignore[arg-type]
        connection_string=azurite.extra["connection_string"],
        work_queue=f"devhost-work-{suffix}",
        result_queue=f"devhost-results-{suffix}",
        attempt_log=tmp_path_factory.mktemp("queue_app") / "attempts.jsonl",
    )
    env = {
        "AzureWebJobsStorage": app.connection_string,
        "WORK_QUEUE": app.work_queue,
        "RESULT_QUEUE": app.result_queue,
        "ATTEMPT_LOG": str(app.attempt_log),
        "DEVHOST_FUNCTION_KEY": "queue-test-key",
    }
    app.devhost = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-queue-app.log")
    yield app
    app.devhost.stop()


class ResultReader:
    """Drains the result queue (base64, as the output binding writes) into a list."""

    def __init__(self, client: QueueClient) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []

    def find(self, upper: str) -> list[dict[str, Any]]:
        try:
            for msg in self.client.receive_messages(max_messages=32, visibility_timeout=30):
                self.seen.append(json.loads(msg.content))
                self.client.delete_message(msg)
        except ResourceNotFoundError:
            pass  # the output binding creates the queue with its first message
        return [r for r in self.seen if r["upper"] == upper]


@pytest.fixture
def results(queue_app: QueueApp) -> ResultReader:
    return ResultReader(queue_app.queue(queue_app.result_queue))


def queue_length(client: QueueClient) -> int:
    return len(client.peek_messages(max_messages=32))


def test_base64_message_is_consumed_and_output_written(queue_app: QueueApp, results: ResultReader) -> None:
    body = f"hello {uuid.uuid4().hex}"
    queue_app.queue(queue_app.work_queue).send_message(body.encode())
    [result] = wait_for(lambda: results.find(body.upper()), what="result message")
    assert result["dequeue_count"] == 1
    assert result["has_times"] and result["has_pop_receipt"]
    wait_for(lambda: queue_length(queue_app.queue(queue_app.work_queue)) == 0, what="work message deleted")
    assert [a["dequeue_count"] for a in queue_app.attempts(body)] == [1]


def test_a_message_that_is_not_base64_goes_to_poison_untried(queue_app: QueueApp, results: ResultReader) -> None:
    """The queues extension 5.x cannot decode it, so it moves it to `-poison` without calling the function."""
    body = f"plain text! {uuid.uuid4().hex}"  # spaces and "!" make it invalid base64
    queue_app.queue(queue_app.work_queue, base64=False).send_message(body)
    poison = queue_app.queue(f"{queue_app.work_queue}-poison", base64=False)

    def poisoned() -> list[str]:
        try:
            return [m.content for m in poison.peek_messages(max_messages=32) if m.content == body]
        except ResourceNotFoundError:
            return []

    assert wait_for(poisoned, what="poisoned plain-text message") == [body]  # the original text, unchanged
    assert queue_app.attempts(body) == []  # the function never ran
    assert results.find(body.upper()) == []


def test_http_output_binding_list_feeds_the_trigger(queue_app: QueueApp, results: ResultReader) -> None:
    tag = uuid.uuid4().hex
    lines = [f"item {i} {tag}" for i in range(3)]
    resp = httpx.post(f"{queue_app.devhost.url}/api/enqueue", content="\n".join(lines), timeout=30)
    assert resp.status_code == 202 and resp.json() == {"queued": 3}
    for line in lines:
        wait_for(lambda line=line: results.find(line.upper()), what=f"result for {line}")


def test_failing_message_goes_to_poison_after_max_dequeue_count(queue_app: QueueApp, results: ResultReader) -> None:
    body = f"fail {uuid.uuid4().hex}"
    queue_app.queue(queue_app.work_queue).send_message(body.encode())
    poison = queue_app.queue(f"{queue_app.work_queue}-poison", base64=False)  # it may hold non-base64 messages too
    text = base64.b64encode(body.encode()).decode()

    def poisoned() -> list[str]:
        try:
            return [m.content for m in poison.peek_messages(max_messages=32) if m.content == text]
        except ResourceNotFoundError:  # the poison queue does not exist until the first poison message
            return []

    assert wait_for(poisoned, what="poison message") == [text]
    assert [a["dequeue_count"] for a in queue_app.attempts(body)] == list(range(1, MAX_DEQUEUE + 1))
    assert queue_length(queue_app.queue(queue_app.work_queue)) == 0
    assert results.find(body.upper()) == []  # a failed invocation sends no output
