"""What devhost reads before it loads the app: host.json and local.settings.json.

Core Tools turns `local.settings.json` `Values` into environment variables for the
worker, without overriding what the process environment already has (so a test's
explicit settings win); devhost does the same. `host.json` supplies the HTTP route
prefix, the durable task hub and the queue trigger options. Both files are optional.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.storage import DEVELOPMENT_STORAGE

log = logging.getLogger("devhost")

DEFAULT_FUNCTION_KEY = "local-dev-function-key"
FUNCTION_KEY_SETTING = "DEVHOST_FUNCTION_KEY"
MASTER_KEY_SETTING = "DEVHOST_MASTER_KEY"
DURABLETASK_KEY_SETTING = "DEVHOST_DURABLETASK_KEY"
HTTP_CONCURRENCY_SETTING = "DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY"
DEFAULT_CONNECTION = "AzureWebJobsStorage"

_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


def parse_timespan(value: str | float | int | None, default: timedelta) -> timedelta:
    """A .NET TimeSpan string from host.json (`"00:00:05"`, `"1.00:00:00"`) as a timedelta.

    >>> parse_timespan("00:01:30.5", timedelta(0))
    datetime.timedelta(seconds=90, microseconds=500000)
    """
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    m = _TIMESPAN.match(str(value).strip())
    if not m:
        raise ValueError(f"not a TimeSpan (d.hh:mm:ss): {value!r}")
    return timedelta(days=int(m["days"] or 0), hours=int(m["h"]), minutes=int(m["m"]), seconds=float(m["s"]))


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the Functions defaults (devhost polls faster idle)."""

    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: timedelta = timedelta(seconds=1)
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, section: Mapping[str, Any]) -> QueueOptions:
        batch = int(section.get("batchSize", 16))
        return cls(
            max_dequeue_count=int(section.get("maxDequeueCount", 5)),
            visibility_timeout=parse_timespan(section.get("visibilityTimeout"), timedelta(0)),
            batch_size=batch,
            new_batch_threshold=int(section.get("newBatchThreshold", max(batch // 2, 1))),
            # Azure's default maximum is 1 minute; locally a second keeps tests and demos snappy.
            max_polling_interval=min(
                parse_timespan(section.get("maxPollingInterval"), timedelta(seconds=1)), timedelta(seconds=1)
            ),
            message_encoding=str(section.get("messageEncoding", "base64")).lower(),
        )


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json devhost honours."""

    raw: Mapping[str, Any]

    @property
    def extensions(self) -> Mapping[str, Any]:
        return self.raw.get("extensions") or {}

    @property
    def route_prefix(self) -> str:
        """HTTP route prefix without slashes; "" means routes sit at the root.

        As on Azure: `extensions.http.routePrefix` defaults to `api` and applies to every HTTP
        route; an empty string removes it ("The route prefix that applies to all routes. Use an
        empty string to remove the default prefix.", host.json settings in
        https://learn.microsoft.com/azure/azure-functions/functions-bindings-http-webhook#hostjson-settings).
        """
        http = self.extensions.get("http") or {}
        return str(http.get("routePrefix", "api")).strip("/")

    @property
    def durable(self) -> Mapping[str, Any]:
        return self.extensions.get("durableTask") or {}

    @property
    def task_hub(self) -> str:
        return str(self.durable.get("hubName") or "TestHubName")

    @property
    def queues(self) -> QueueOptions:
        return QueueOptions.from_host_json(self.extensions.get("queues") or {})

    @property
    def function_timeout(self) -> timedelta:
        return parse_timespan(self.raw.get("functionTimeout"), timedelta(minutes=5))


def load_host_config(app_dir: Path) -> HostConfig:
    """host.json of the app (an empty config if there is none)."""
    path = app_dir / "host.json"
    if not path.exists():
        return HostConfig({})
    return HostConfig(json.loads(path.read_text(encoding="utf-8")))


def load_local_settings(app_dir: Path) -> tuple[Path | None, dict[str, str]]:
    """`Values` of local.settings.json, or of local.settings.sample.json if that is all there is."""
    for name in ("local.settings.json", "local.settings.sample.json"):
        path = app_dir / name
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            values = data.get("Values") or {}
            return path, {str(k): "" if v is None else str(v) for k, v in values.items()}
    return None, {}


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Export `values` into `environ` where not already set; returns the names exported."""
    applied = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = value
            applied.append(name)
    return applied


def function_key(environ: Mapping[str, str] = os.environ) -> str:
    """The key that `function` routes require locally."""
    return environ.get(FUNCTION_KEY_SETTING) or DEFAULT_FUNCTION_KEY


@dataclass(frozen=True)
class HostKeys:
    """The keys the host checks, with Azure's rules (learn.microsoft.com, "Work with access keys in Azure Functions").

    - `function` auth level: a function key or the master key;
    - `admin` auth level: the master key only;
    - the Durable extension's webhooks: its system key (`durabletask_extension`) or the master key.
    """

    function: str
    master: str
    durabletask: str

    def allows(self, level: str, given: str) -> bool:
        """Does `given` open a route of auth `level` (`anonymous`, `function`, `admin`, `system`)?"""
        if level == "anonymous":
            return True
        accepted = {"function": (self.function, self.master), "admin": (self.master,)}.get(
            level, (self.durabletask, self.master)
        )
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in accepted)


def host_keys(environ: Mapping[str, str] = os.environ) -> HostKeys:
    """The local keys: the settings if set, else fixed development values (`make run` prints them)."""
    return HostKeys(
        function=function_key(environ),
        master=environ.get(MASTER_KEY_SETTING) or "local-dev-master-key",
        durabletask=environ.get(DURABLETASK_KEY_SETTING) or "local-dev-durabletask-key",
    )


def http_per_instance_concurrency(environ: Mapping[str, str] = os.environ) -> int:
    """How many HTTP requests one instance runs at once; Flex Consumption's default for Python is 1.

    On Azure this is the plan's `scaleAndConcurrency.triggers.http.perInstanceConcurrency`
    (infra/app/function.bicep sets it); locally the setting of the same meaning.
    """
    raw = environ.get(HTTP_CONCURRENCY_SETTING) or "1"
    value = int(raw)
    if value < 1:
        raise ValueError(f"{HTTP_CONCURRENCY_SETTING} must be at least 1, not {raw}")
    return value


_SETTING_EXPR = re.compile(r"%([^%]+)%")


def resolve_binding_expression(value: str, environ: Mapping[str, str] = os.environ) -> str:
    """Replace `%SETTING%` app-setting references in a binding property (queue names use them)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in environ:
            raise KeyError(f"binding refers to app setting %{name}% which is not set")
        return environ[name]

    return _SETTING_EXPR.sub(repl, value)


def storage_connection_string(setting: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The connection string a binding's `connection` names (default AzureWebJobsStorage).

    As the host does, `X` is looked up as `X` and then `AzureWebJobsX`;
    `UseDevelopmentStorage=true` means Azurite on its default ports.
    """
    setting = setting or DEFAULT_CONNECTION
    value = environ.get(setting) or environ.get(f"AzureWebJobs{setting}")
    if not value:
        raise KeyError(
            f"storage connection setting {setting} is not set (identity-based connections need Azure; "
            "locally use a connection string or UseDevelopmentStorage=true)"
        )
    if value.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        return DEVELOPMENT_STORAGE
    return value
