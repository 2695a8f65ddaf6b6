"""Composing devhost: settings, the app, the durable engine, queue listeners, the HTTP server.

Start order follows the Functions host: settings into the environment (as Core Tools
does with local.settings.json), load the app, start the durable engine (if the app has
durable functions), the queue listeners, the HTTP server, and last the timer schedules
(devhost/timers.py), so the first request already finds everything running. Stop order is
the reverse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from devhost.config import (
    HostConfig,
    apply_settings,
    host_keys,
    http_per_instance_concurrency,
    load_host_config,
    load_local_settings,
    resolve_binding_expression,
    storage_connection_string,
)
from devhost.http import DurableRpcHost, HttpHost
from devhost.invoke import Invoker, uses_durable
from devhost.loader import FunctionIndex, load_function_app
from devhost.queue_io import QueueClients
from devhost.queues import QueueTriggerListener
from devhost.timer_status import StorageScheduleMonitor, host_id
from devhost.timers import TimerTriggerListener

log = logging.getLogger("devhost")

SUPPORTED_TRIGGERS = (
    "httpTrigger", "queueTrigger", "timerTrigger", "orchestrationTrigger", "activityTrigger", "entityTrigger",
)


class DurableEngineUnavailable(RuntimeError):
    """The app has durable functions but devhost.durable.engine cannot be imported."""


class Host:
    """One running devhost: `start()`, then `stop()` (idempotent)."""

    def __init__(
        self,
        app_dir: Path,
        port: int = 7071,
        environ: MutableMapping[str, str] = os.environ,
        *,
        use_local_settings: bool = True,
    ) -> None:
        self.app_dir = app_dir.resolve()
        self.port = port
        self.use_local_settings = use_local_settings
        self.environ = environ
        self.config: HostConfig = load_host_config(self.app_dir)
        self.index: FunctionIndex | None = None
        self.engine: Any = None
        self.http: HttpHost | None = None
        self.rpc: DurableRpcHost | None = None
        self.listeners: list[QueueTriggerListener] = []
        self.timers: list[TimerTriggerListener] = []
        self.queues = QueueClients()

    def start(self) -> None:
        settings_file, values = load_local_settings(self.app_dir) if self.use_local_settings else (None, {})
        apply_settings(values, self.environ)
        self.environ.setdefault("WEBSITE_HOSTNAME", f"127.0.0.1:{self.port}")
        log.info(
            "settings from %s", f"{settings_file} and the environment" if settings_file else "the environment only"
        )

        self.index = index = load_function_app(self.app_dir)
        for fn in index.functions.values():
            if fn.trigger_type not in SUPPORTED_TRIGGERS:
                log.warning("function %s: trigger %s is not run by devhost", fn.name, fn.trigger_type)

        keys = host_keys(self.environ)
        if any(uses_durable(fn) for fn in index.functions.values()):
            self.engine = self._create_engine(index, keys.durabletask)
            self.rpc = DurableRpcHost(self.engine)
            self.engine.rpc_base_url = self.rpc.base_url
            self.rpc.start()
            self.engine.start()
            log.info("durable engine started (task hub %s)", self._task_hub())

        invoker = Invoker(
            index,
            client_binding=self.engine.client_binding if self.engine else None,
            queue_options=self.config.queues,
            queues=self.queues,
            environ=self.environ,
        )
        for fn in index.of_trigger("queueTrigger"):
            listener = QueueTriggerListener(
                fn,
                invoker,
                options=self.config.queues,
                function_timeout=self.config.function_timeout,
                queues=self.queues,
            )
            listener.start()
            self.listeners.append(listener)
            log.info("queue trigger %s listening on queue %s", fn.name, listener.queue_name)

        timer_functions = index.of_trigger("timerTrigger")
        monitor = StorageScheduleMonitor(  # timers need the host's storage, as on Azure (KeyError otherwise)
            storage_connection_string(None, self.environ), host_id(self.app_dir, self.environ)
        ) if timer_functions else None
        for fn in timer_functions:
            timer = TimerTriggerListener(fn, invoker, monitor)  # a schedule that does not parse stops the start
            self.timers.append(timer)
            log.info("timer trigger %s on schedule %r, next at %s", fn.name, timer.expression, timer.next)

        self.http = HttpHost(
            index,
            invoker,
            route_prefix=self.config.route_prefix,
            keys=keys,
            engine=self.engine,
            port=self.port,
            http_concurrency=http_per_instance_concurrency(self.environ),
        )
        self.http.start()
        for route in self.http.routes:
            log.info(
                "http %s: [%s] http://127.0.0.1:%d/%s (%s)",
                route.function.name,
                ",".join(sorted(route.methods)),
                self.http.port,
                route.template.template,
                route.auth_level,
            )
        for timer in self.timers:  # after the HTTP server, as the host starts listeners once it is up
            timer.start()
        log.info("devhost ready on http://127.0.0.1:%d with %d functions", self.http.port, len(index.functions))

    def stop(self) -> None:
        """Stop accepting requests, stop listeners and the engine, then the worker."""
        if self.http is not None:
            self.http.stop()
            self.http = None
        for timer in self.timers:
            timer.stop()
        self.timers = []
        for listener in self.listeners:
            listener.stop()
        self.listeners = []
        if self.rpc is not None:
            self.rpc.stop()
            self.rpc = None
        if self.engine is not None:
            try:
                self.engine.stop()
            finally:
                self.engine = None
        self.queues.close()
        if self.index is not None:
            self.index.worker.stop()

    def _task_hub(self) -> str:
        return resolve_binding_expression(self.config.task_hub, self.environ)

    def _create_engine(self, index: FunctionIndex, system_key: str) -> Any:
        try:
            from devhost.durable.engine import DurableEngine
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("devhost.durable"):
                raise
            raise DurableEngineUnavailable(
                "this app has durable functions (orchestrations, activities, entities or durable clients), "
                f"but devhost's durable engine is not available: {exc}"
            ) from exc
        return DurableEngine(
            index,
            connection_string=storage_connection_string(None, self.environ),
            task_hub=self._task_hub(),
            base_url=f"http://127.0.0.1:{self.port}",
            host_config=self.config.raw,
            logger=logging.getLogger("devhost.durable"),
            system_key=system_key,
        )
