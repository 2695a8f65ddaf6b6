"""Which engine runs which instance when several devhosts share one task hub.

Tests start several devhosts on one Azurite, and a restarted devhost must pick up what its
killed predecessor left. Each engine heartbeats a row in `<hub>Engines` (host, pid, base
URL, time, stopped) and stamps every instance it commits with its id (`Owner`). An engine
adopts an unfinished instance only if its owner is gone *and* was this same devhost (same
base URL: a restart) or left no row at all; gone = marked stopped, heartbeat older than the
TTL, or a dead pid on this machine (so a restart right after SIGKILL adopts at once).
Live hosts therefore never re-run each other's activities.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from devhost.durable import history as h
from devhost.durable.store import DurableStore

HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 10.0


class EnginePeers:
    def __init__(self, store: DurableStore, base_url: str) -> None:
        self.store = store
        self.base_url = base_url
        self.engine_id = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self._rows: dict[str, Any] = {}
        self._read_at = -1e9

    def heartbeat(self, stopped: bool = False) -> None:
        self.store.heartbeat(
            self.engine_id,
            host=self.hostname,
            pid=os.getpid(),
            base_url=self.base_url,
            now=h.iso(h.utc_now()),
            stopped=stopped,
        )

    def adoptable(self, owner: str | None) -> bool:
        """May this engine take over an unfinished instance last committed by `owner`?"""
        if owner is None:
            return True
        if owner == self.engine_id:
            return False
        now = time.monotonic()
        if now - self._read_at > HEARTBEAT_SECONDS:
            self._rows = {e["RowKey"]: e for e in self.store.engine_rows()}
            self._read_at = now
        row = self._rows.get(owner)
        if row is None:
            return True
        if row.get("BaseUrl") != self.base_url:
            return False  # another devhost's instance: never ours to run
        if row.get("Stopped"):
            return True
        if (h.utc_now() - h.parse_iso(row["Alive"])).total_seconds() > HEARTBEAT_TTL_SECONDS:
            return True
        return row.get("Host") == self.hostname and not pid_alive(int(row.get("Pid", 0)))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
