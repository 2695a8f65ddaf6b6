"""Starting the local stack's processes: Azurite, localstripe and devhost itself.

Used by `make run` (scripts/run_local.py), the test fixtures and the benchmarks, so
every one of them starts the same processes the same way. Each `start_*` returns a
`Service` that stops its process (and children) on `stop()` or when used as a context
manager. Ports default to free ones picked by the OS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from core.storage import azurite_connection_string

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Service:
    """A started child process and what callers need to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process group politely, then forcefully."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the process group at once (crash simulation)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept connections on host:port right now?"""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _spawn(
    args: list[str],
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    inherit_output: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group; output to log_path, the terminal (inherit) or nowhere."""
    if inherit_output:
        out: int | IO[bytes] | None = None
    else:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        args,
        stdout=out,
        stderr=None if inherit_output else subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=str(cwd) if cwd else None,
        start_new_session=True,  # own process group, so stop() reaches grandchildren
    )


def azurite_binary() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if not found:
        raise FileNotFoundError("azurite not installed: run `npm ci` in the repo root")
    return found


def start_azurite(
    location: Path | None = None,
    *,
    ports: tuple[int, int, int] | None = None,
    in_memory: bool = True,
    log_path: Path | None = None,
) -> Service:
    """Start Azurite (blob, queue, table); `extra["connection_string"]` reaches it."""
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    args = [
        azurite_binary(), "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table),
    ]
    if in_memory:  # Azurite refuses --location together with --inMemoryPersistence
        args.insert(2, "--inMemoryPersistence")
    else:
        location = location or Path(tempfile.mkdtemp(prefix="azurite-"))
        location.mkdir(parents=True, exist_ok=True)
        args += ["--location", str(location)]
    proc = _spawn(args, log_path)
    for p in (blob, queue, table):
        wait_for_port(p, 60, proc)
    conn = azurite_connection_string(blob=blob, queue=queue, table=table)
    return Service("azurite", proc, f"http://127.0.0.1:{table}", table, log_path,
                   {"connection_string": conn, "blob_port": str(blob), "queue_port": str(queue)})


# localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every
# write and reloads it at start unless --from-scratch. Shared by every instance on the
# machine, that file leaks objects between runs (breaking object counts) and, written by
# concurrent instances, ends up truncated so the next start dies with EOFError. Each
# instance here starts empty and keeps its store in memory only (which also spares the
# O(store size) pickling on every write).
_LOCALSTRIPE_BOOT = Path(__file__).with_name("localstripe_boot.py")


def start_localstripe(*, port: int | None = None, log_path: Path | None = None) -> Service:
    """Start localstripe (a stateful fake Stripe) on `port`, empty, in memory, lists indexed by type
    (`devhost/localstripe_boot.py`)."""
    port = port or free_port()
    args = [sys.executable, "-P", str(_LOCALSTRIPE_BOOT), "--port", str(port), "--from-scratch"]
    proc = _spawn(args, log_path)
    wait_for_port(port, 60, proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # the port opens a moment before the app answers
        try:
            httpx.get(f"{url}/v1/customers", auth=("sk_test_ready", ""), timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return Service("localstripe", proc, url, port, log_path)


def start_devhost(
    app_dir: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    log_path: Path | None = None,
    ready_path: str | None = None,
    timeout: float = 60.0,
    use_core_tools: bool = False,
    inherit_output: bool = False,
    local_settings: bool = False,
) -> Service:
    """Start `python -m devhost` for the app in `app_dir` with the given app settings.

    `env` is merged over os.environ; it should carry AzureWebJobsStorage and whatever
    settings the app needs. Waits until the host answers (or `ready_path` returns <500).
    `use_core_tools` runs `func start` in `app_dir` instead (where Core Tools exist);
    `inherit_output` sends the host's log to this process's terminal (for `make run`).
    devhost ignores local.settings(.sample).json unless `local_settings` is true, so a
    developer's settings (or the sample's localhost:7071 URLs) never leak into tests.
    """
    port = port or free_port()
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH", "")]))
    if use_core_tools:
        args, cwd = ["func", "start", "--port", str(port)], app_dir
    else:
        args, cwd = [sys.executable, "-m", "devhost", "--port", str(port), "--app-dir", str(app_dir)], REPO_ROOT
        if not local_settings:
            args.append("--no-local-settings")
    proc = _spawn(args, log_path, full_env, cwd=cwd, inherit_output=inherit_output)
    wait_for_port(port, timeout, proc)
    url = f"http://127.0.0.1:{port}"
    if ready_path:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + ready_path, timeout=5).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"devhost did not become ready at {ready_path}")
            time.sleep(0.2)
    return Service("devhost", proc, url, port, log_path)
