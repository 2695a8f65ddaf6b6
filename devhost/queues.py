"""Queue triggers: poll Azure Storage queues and run the functions, as the Functions host does.

Per queue-triggered function one poller thread receives up to `batchSize` messages
(fetching more once no more than `newBatchThreshold` are in flight) and hands each to a
worker thread. A message stays invisible while it runs (for `functionTimeout`); it is
deleted when the function succeeds. When the function fails, the message becomes
visible again after `visibilityTimeout`, unless its dequeue count has reached
`maxDequeueCount`: then it is copied, text unchanged, to `<queue>-poison` and deleted.
A message that is not valid base64 goes there at once, untried (queues extension 5.x).
Polling repeats at once while messages arrive and backs off to about a second idle.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from devhost.config import QueueOptions, resolve_binding_expression, storage_connection_string
from devhost.invoke import FunctionFailed, Invoker, QueueMessageData, log_invocation, sent_summary
from devhost.loader import FunctionInfo
from devhost.queue_io import QueueClients, UndecodableMessage, decode_message

log = logging.getLogger("devhost")

MIN_POLL_SECONDS = 0.1


class QueueTriggerListener:
    """Runs one queue-triggered function for every message of its queue."""

    def __init__(
        self,
        fn: FunctionInfo,
        invoker: Invoker,
        *,
        options: QueueOptions,
        function_timeout: timedelta,
        queues: QueueClients,
    ) -> None:
        self.fn = fn
        self.invoker = invoker
        self.options = options
        self.queue_name = resolve_binding_expression(str(fn.trigger["queueName"])).lower()
        self.connection_string = storage_connection_string(fn.trigger.get("connection"))
        self.lease_seconds = int(min(max(function_timeout.total_seconds(), 30), 7 * 24 * 3600))
        self._queues = queues
        self._stop = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(options.batch_size, thread_name_prefix=f"queue-{self.queue_name}")
        self._thread = threading.Thread(target=self._run, name=f"queue-poller-{self.queue_name}", daemon=True)

    @property
    def client(self) -> QueueClient:
        return self._queues.get(self.connection_string, self.queue_name)

    @property
    def poison_client(self) -> QueueClient:
        return self._queues.get(self.connection_string, f"{self.queue_name}-poison")

    def start(self) -> None:
        self.client  # noqa: B018 - creates the queue now, so senders can use it at once
        self._thread.start()

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(grace)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- polling -------------------------------------------------------------------
    def _run(self) -> None:
        delay = MIN_POLL_SECONDS
        max_delay = max(self.options.max_polling_interval.total_seconds(), MIN_POLL_SECONDS)
        while not self._stop.is_set():
            try:
                got = self._poll_once()
            except AzureError as exc:
                log.warning("queue %s: polling failed (%s); retrying", self.queue_name, type(exc).__name__)
                got = 0
            except Exception:  # never let the poller die: log and keep polling
                log.exception("queue %s: polling failed; retrying", self.queue_name)
                got = 0
            # Busy: poll again almost at once. Idle: back off, doubling, to the max interval.
            delay = 0.0 if got else min(max(delay * 2, MIN_POLL_SECONDS), max_delay)
            if delay:
                self._stop.wait(delay)

    def _poll_once(self) -> int:
        with self._busy_lock:
            busy = self._busy
        free = self.options.batch_size - busy
        if busy > self.options.new_batch_threshold or free <= 0:
            time.sleep(0.02)
            return 0
        messages = list(
            self.client.receive_messages(
                messages_per_page=min(free, 32), max_messages=min(free, 32), visibility_timeout=self.lease_seconds
            )
        )
        for msg in messages:
            with self._busy_lock:
                self._busy += 1
            self._pool.submit(self._process, msg)
        return len(messages)

    # --- one message ---------------------------------------------------------------
    def _process(self, msg: QueueMessage) -> None:
        try:
            self._handle(msg)
        except Exception:  # storage errors while settling: the message reappears after its lease
            log.exception("queue %s: could not settle message %s", self.queue_name, msg.id)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _handle(self, msg: QueueMessage) -> None:
        max_count = self.options.max_dequeue_count
        if msg.dequeue_count and msg.dequeue_count > max_count:
            # Already tried maxDequeueCount times (an earlier host died mid-run): poison it untried.
            self._poison(msg)
            return
        started = time.perf_counter()
        try:
            body = decode_message(_text(msg.content), self.options.message_encoding)
        except UndecodableMessage:
            log_invocation(self.fn.name, f"queue {self.queue_name}", "not base64, moved to poison queue", 0.0)
            self._poison(msg)
            return
        message = QueueMessageData(
            id=msg.id,
            body=body,
            dequeue_count=msg.dequeue_count or 1,
            expiration_time=msg.expires_on,
            insertion_time=msg.inserted_on,
            next_visible_time=msg.next_visible_on,
            pop_receipt=msg.pop_receipt,
        )
        try:
            invocation = self.invoker.invoke(
                self.fn, message.typed_data(), trigger_metadata=message.trigger_metadata()
            )
        except Exception as exc:
            detail = f"{exc.message}\n{exc.stack_trace}" if isinstance(exc, FunctionFailed) else repr(exc)
            log.error(
                "function %s failed on message %s (dequeue count %s): %s",
                self.fn.name,
                msg.id,
                msg.dequeue_count,
                detail,
            )
            poisoned = (msg.dequeue_count or 0) >= max_count
            outcome = "error, moved to poison queue" if poisoned else "error, will retry"
            log_invocation(self.fn.name, f"queue {self.queue_name}", outcome, _ms(started))
            if poisoned:
                self._poison(msg)
            else:
                self.client.update_message(
                    msg,
                    pop_receipt=msg.pop_receipt,
                    visibility_timeout=int(self.options.visibility_timeout.total_seconds()),
                )
            return
        self._delete(msg)
        log_invocation(
            self.fn.name, f"queue {self.queue_name}", "ok", _ms(started), detail=sent_summary(invocation.sent)
        )

    def _poison(self, msg: QueueMessage) -> None:
        self.poison_client.send_message(_text(msg.content))
        self._delete(msg)
        log.warning("queue %s: message %s moved to %s-poison", self.queue_name, msg.id, self.queue_name)

    def _delete(self, msg: QueueMessage) -> None:
        # Already gone is fine: its lease expired and another receiver settled it.
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_message(msg.id, msg.pop_receipt)


def _text(content: Any) -> str:
    if isinstance(content, bytes):
        return content.decode("utf-8")
    return "" if content is None else str(content)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
