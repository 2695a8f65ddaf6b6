"""Timer schedule status in blob storage, and the past-due check at start, as the timers extension keeps them.

From Azure/azure-webjobs-sdk-extensions, `Extensions/Timers/Scheduling/`:

- `StorageScheduleMonitorV2`: one blob per timer, `azure-webjobs-hosts/timers/{hostId}/{timerName}/status`,
  holding the JSON `{"Last", "Next", "LastUpdated"}` (Json.NET, ISO dates); written after every run
  (best effort: a failed write is logged), read when the listener starts.
- `ScheduleMonitor.CheckPastDueAsync`: with no status yet, write one (`Next` = the next occurrence
  from now) and run nothing; else recompute the expected `Next` from `Last` (or `LastUpdated`), and if
  the schedule changed since, store the new `Next` (from now, if the expected one already passed, so a
  changed schedule is not "past due"); then past due means now > the recorded `Next`: the listener runs
  once at once with `IsPastDue: true`.
- The timer's name is the function's full method name; for functions the host indexes from a
  worker that is `Host.Functions.<function name>`.
- The host id (`ScriptHostIdProvider`, azure-functions-host): the `AzureFunctionsJobHost__id`
  setting if set; on App Service the site's unique slot name; locally the machine name (letters and
  digits) + "-" + a stable hash of the app's path; at most 32 characters, lower case, no trailing
  "-". devhost uses the local rule with its own stable hash (CRC-32 of the path), so devhosts of one
  app folder on one machine share their timers' status, as `func start` runs would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from devhost.ncrontab import Schedule

log = logging.getLogger("devhost")

CONTAINER = "azure-webjobs-hosts"
DOTNET_MIN_DATE = "0001-01-01T00:00:00"  # ScheduleMonitor.DefaultDateTime, as Json.NET writes it
MAX_HOST_ID = 32  # ScriptConstants.MaximumHostIdLength


def host_id(app_dir: Path, environ: Any) -> str:
    configured = environ.get("AzureFunctionsJobHost__id")
    if configured:
        return str(configured)
    machine = "".join(c for c in socket.gethostname() if c.isalnum())
    raw = f"{machine}-{zlib.crc32(str(app_dir.resolve()).encode())}"
    return raw[:MAX_HOST_ID].lower().rstrip("-")


def timer_name(function: str) -> str:
    return f"Host.Functions.{function}"


def _iso(t: datetime | None) -> str:
    return DOTNET_MIN_DATE if t is None else t.astimezone(UTC).isoformat()


def _parse(text: Any) -> datetime | None:
    if not text or str(text).startswith("0001-"):
        return None  # DefaultDateTime: never set
    t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass
class ScheduleStatus:
    """`Last`, `Next`, `LastUpdated` (None: .NET's default date, never set)."""

    last: datetime | None
    next: datetime | None
    last_updated: datetime | None

    def to_json(self) -> dict[str, str]:
        return {"Last": _iso(self.last), "Next": _iso(self.next), "LastUpdated": _iso(self.last_updated)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleStatus:
        return cls(_parse(data.get("Last")), _parse(data.get("Next")), _parse(data.get("LastUpdated")))


class StorageScheduleMonitor:
    """Reads and writes the status blobs of one host id (module doc)."""

    def __init__(self, connection_string: str, host: str) -> None:
        self._container = BlobServiceClient.from_connection_string(connection_string).get_container_client(CONTAINER)
        self._path = f"timers/{host}"

    def _blob(self, timer: str) -> Any:
        return self._container.get_blob_client(f"{self._path}/{timer}/status")

    def get(self, timer: str) -> ScheduleStatus | None:
        try:
            return ScheduleStatus.from_json(json.loads(self._blob(timer).download_blob().readall()))
        except ResourceNotFoundError:
            return None

    def update(self, timer: str, status: ScheduleStatus) -> None:
        body = json.dumps(status.to_json())
        try:
            try:
                self._blob(timer).upload_blob(body, overwrite=True)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                self._blob(timer).upload_blob(body, overwrite=True)
        except AzureError as exc:  # best effort, as the extension's UpdateStatusAsync
            log.error("timer %s: could not update its schedule status: %s", timer, type(exc).__name__)

    def check_past_due(self, timer: str, now: datetime, schedule: Schedule,
                       last: ScheduleStatus | None) -> tuple[bool, ScheduleStatus]:
        """(past due?, the status now recorded): `CheckPastDueAsync` (module doc)."""
        if last is None:
            status = ScheduleStatus(None, schedule.next_after(now), now)
            self.update(timer, status)
            return False, status
        base = last.last or last.last_updated
        expected = schedule.next_after(base) if base is not None else schedule.next_after(now)
        if last.next != expected:  # the schedule changed since the status was written
            updated = base
            if expected is not None and now > expected:
                expected, updated = schedule.next_after(now), now
            last = ScheduleStatus(None, expected, updated or now)
            self.update(timer, last)
        return last.next is not None and now > last.next, last
