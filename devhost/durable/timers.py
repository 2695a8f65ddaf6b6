"""Durable timers: an in-memory heap of due times, re-armed from history after a restart."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from devhost.durable import history as h

# deliver(instance_id, generation, timer_id, fire_at) persists the TimerFired event
Deliver = Callable[[str, int, int, str], None]


class DurableTimers:
    def __init__(self, deliver: Deliver, log: logging.Logger) -> None:
        self._deliver = deliver
        self._log = log
        self._heap: list[tuple[float, str, int, int, str]] = []
        self._cv = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="durable-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=10)

    def arm(self, instance_id: str, generation: int, timer_id: int, fire_at: str) -> None:
        with self._cv:
            heapq.heappush(self._heap, (h.parse_iso(fire_at).timestamp(), instance_id, generation, timer_id, fire_at))
            self._cv.notify()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cv:
                if not self._heap:
                    self._cv.wait(1.0)
                    continue
                due, instance_id, generation, timer_id, fire_at = self._heap[0]
                delay = due - time.time()
                if delay > 0:
                    self._cv.wait(min(delay, 1.0))
                    continue
                heapq.heappop(self._heap)
            try:
                self._deliver(instance_id, generation, timer_id, fire_at)
            except Exception:
                self._log.exception("timer %s #%d: delivery failed; re-arming", instance_id, timer_id)
                self.arm(instance_id, generation, timer_id, fire_at)
                time.sleep(0.5)
