"""Storage queues for devhost: clients, message encoding, and sending output-binding messages.

Azure Functions reads queue-trigger messages as base64 and writes output-binding
messages as base64 (host.json `extensions.queues.messageEncoding`, default `base64`);
the Python SDK's `BinaryBase64EncodePolicy` produces the same text. Messages travel
here as the raw queue text and are (de)coded explicitly, so a poison copy keeps the
exact original text, and a plain-text message that is not valid base64 is still read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from collections.abc import Iterable
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devhost.protocol import TypedData


class UndecodableMessage(ValueError):
    """A queue message that is not valid base64 while the host expects base64."""


def decode_message(raw: str, encoding: str = "base64") -> bytes:
    """The body bytes of a queue message's text; `UndecodableMessage` when it is not valid base64.

    The queues extension 5.x moves such a message to `<queue>-poison` without calling the
    function (BRIEF: "Queues extension 5.x"); the listener does the same.
    """
    if encoding == "base64":
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise UndecodableMessage("the message is not valid base64") from None
    return raw.encode("utf-8")


def encode_message(body: bytes, encoding: str = "base64") -> str:
    """The queue text for `body` as the Functions host writes it."""
    if encoding == "base64":
        return base64.b64encode(body).decode("ascii")
    return body.decode("utf-8")


def queue_messages(data: TypedData | None) -> list[bytes]:
    """The messages a queue output binding's value stands for, as the worker encoded it.

    `azure-functions`' queue output converter sends a `str` as `string`, `bytes` as `bytes`,
    and a list (of str or QueueMessage) or a QueueMessage as `json`; a JSON array is one
    message per item (a QueueMessage item carries its text in `body`).
    """
    if data is None:
        return []
    kind = data.WhichOneof("data")
    if kind == "string":
        return [data.string.encode("utf-8")]
    if kind == "bytes":
        return [bytes(data.bytes)]
    if kind == "json":
        value = json.loads(data.json)
        items = value if isinstance(value, list) else [value]
        return [_message_body(item) for item in items]
    if kind is None:
        return []
    raise TypeError(f"a queue output binding cannot send {kind!r} data")


def _message_body(item: Any) -> bytes:
    if isinstance(item, dict) and "body" in item:
        item = item["body"]
    return (item if isinstance(item, str) else json.dumps(item)).encode("utf-8")


class QueueClients:
    """Cached QueueClients per (connection string, queue); queues are created on first use."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], QueueClient] = {}
        self._lock = threading.Lock()

    def get(self, connection_string: str, queue_name: str, *, create: bool = True) -> QueueClient:
        key = (connection_string, queue_name)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        client = QueueClient.from_connection_string(connection_string, queue_name)
        if create:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
        with self._lock:
            return self._clients.setdefault(key, client)

    def send(self, connection_string: str, queue_name: str, bodies: Iterable[bytes], encoding: str = "base64") -> int:
        """Send each body as one message; returns how many were sent."""
        client = self.get(connection_string, queue_name)
        count = 0
        for body in bodies:
            client.send_message(encode_message(body, encoding))
            count += 1
        return count

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
