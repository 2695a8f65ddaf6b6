"""`python -m devhost [--port 7071] [--app-dir DIR] [--no-local-settings] [--check]`: run a function app locally.

Logs go to stderr, one line per invocation. SIGTERM or Ctrl-C stops accepting
requests, stops the durable engine and exits 0. An app the Python worker refuses to
index or load stops devhost at start with the worker's message and exit code 3, as the
app would serve nothing on Azure. `--check` only loads the app through the worker,
prints its functions and exits (0, or 3 with the worker's message).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from devhost.host import DurableEngineUnavailable, Host
from devhost.http import RouteConflict
from devhost.loader import AppLoadError, load_function_app

QUIET_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "aiohttp.access")


def configure_logging() -> None:
    """Readable lines on stderr; chatty SDK loggers (which would print URLs) held at WARNING."""
    level = os.environ.get("DEVHOST_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description="Run an Azure Functions Python app locally.")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app-dir", type=Path, default=Path.cwd())
    parser.add_argument(
        "--no-local-settings",
        action="store_true",
        help="ignore local.settings(.sample).json: the environment alone configures the app (tests use this)",
    )
    parser.add_argument("--check", action="store_true", help="load the app through the worker, list it, and exit")
    args = parser.parse_args(argv)
    configure_logging()
    log = logging.getLogger("devhost")
    if args.check:
        return check(args.app_dir)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    host = Host(args.app_dir, args.port, use_local_settings=not args.no_local_settings)
    try:
        host.start()
    except DurableEngineUnavailable as exc:
        log.error("%s", exc)
        host.stop()
        return 2
    except (AppLoadError, RouteConflict) as exc:
        log.error("%s", exc)
        host.stop()
        return 3
    except Exception:
        log.exception("devhost could not start")
        host.stop()
        return 1
    try:
        while not stop.wait(0.5):
            pass
    finally:
        host.stop()
    log.info("devhost stopped")
    return 0


def check(app_dir: Path) -> int:
    """Load `app_dir` through the worker and print one line per function (name, trigger)."""
    try:
        index = load_function_app(app_dir)
    except AppLoadError as exc:
        print(exc, file=sys.stderr)
        return 3
    for fn in index.functions.values():
        print(f"{fn.name} {fn.trigger_type}")
    index.worker.stop()
    return 0


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: worker threads still inside a user function would hold the interpreter open.
    os._exit(code)
