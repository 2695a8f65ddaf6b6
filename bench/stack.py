"""The services a bench runs against: Azurite (behind a counting relay), localstripe, devhost."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.relay import CountingRelay
from core.storage import azurite_connection_string
from devhost.services import REPO_ROOT, Service, start_azurite, start_devhost, start_localstripe

STRIPE_SECRET = "sk_test_spendgate_bench"
FUNCTION_KEY = "bench-function-key"
ARTIFACTS = REPO_ROOT / "artifacts"


@dataclass
class Stack:
    azurite: Service
    localstripe: Service
    devhost: Service
    relay: CountingRelay
    table_prefix: str
    twin_stripe: Service  # a second, identical localstripe for the direct calls being compared

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each service process."""
        return {name: cpu_seconds(svc.proc.pid) for name, svc in
                (("devhost", self.devhost), ("azurite", self.azurite), ("localstripe", self.localstripe),
                 ("twin_localstripe", self.twin_stripe))}

    def fresh_stripes(self) -> None:
        """Empty localstripes on the same ports (devhost keeps its STRIPE_API_BASE): localstripe
        gets slower with every object it stores, so repeated rounds each start from scratch."""
        for attr in ("localstripe", "twin_stripe"):
            old: Service = getattr(self, attr)
            old.stop()
            setattr(self, attr, start_localstripe(port=old.port, log_path=old.log_path))

    @property
    def url(self) -> str:
        return self.devhost.url

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"x-functions-key": FUNCTION_KEY}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: dict[str, float], after: dict[str, float], per: int) -> str:
    """`devhost 12.3 ms, azurite 4.5 ms, ...` per unit of work."""
    return ", ".join(f"{k} {(after[k] - before[k]) * 1000 / per:.1f} ms" for k in before)


@contextmanager
def running_stack(name: str, **settings: str) -> Iterator[Stack]:
    """Start everything on free ports (logs in artifacts/bench-<name>-*.log); stop it after.

    localstripe slows down as it stores more objects (each create costs more), so direct
    calls go to a twin instance that is given exactly the same work: neither side of a
    comparison runs against a fuller store than the other."""
    ARTIFACTS.mkdir(exist_ok=True)
    started: list[Service] = []
    relay: CountingRelay | None = None
    stack: Stack | None = None
    try:
        azurite = start_azurite(log_path=ARTIFACTS / f"bench-{name}-azurite.log")
        started.append(azurite)
        localstripe = start_localstripe(log_path=ARTIFACTS / f"bench-{name}-localstripe.log")
        started.append(localstripe)
        twin = start_localstripe(log_path=ARTIFACTS / f"bench-{name}-localstripe-direct.log")
        started.append(twin)
        prefix = "sgb" + uuid.uuid4().hex[:8]
        relay = CountingRelay(azurite.port, f"{prefix}ledger".encode()).start()
        conn = azurite_connection_string(blob=int(azurite.extra["blob_port"]), queue=int(azurite.extra["queue_port"]),
                                         table=relay.port)
        env = {
            "FUNCTIONS_WORKER_RUNTIME": "python", "AzureWebJobsStorage": conn, "STRIPE_API_BASE": localstripe.url,
            "STRIPE_SECRET_KEY": STRIPE_SECRET, "SPENDGATE_TABLE_PREFIX": prefix, "DEVHOST_FUNCTION_KEY": FUNCTION_KEY,
            "PYTHON_THREADPOOL_THREAD_COUNT": "64", "DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY": "32",
            "SPENDGATE_TOOL_QUEUE_PREFIX": "spendgate-tool",  # the agent tools' queue triggers resolve it at start
            **settings,
        }
        devhost = start_devhost(REPO_ROOT, env, log_path=ARTIFACTS / f"bench-{name}-devhost.log",
                                ready_path="/api/health")
        started.append(devhost)
        stack = Stack(azurite, localstripe, devhost, relay, prefix, twin)
        yield stack
    finally:
        if stack is not None:  # fresh_stripes() may have replaced the localstripes
            started = [s for s in started if s.name != "localstripe"] + [stack.localstripe, stack.twin_stripe]
        for svc in reversed(started):
            svc.stop()
        if relay is not None:
            relay.stop()
