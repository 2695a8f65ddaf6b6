"""`python -m devhost [--port 7071] [--app-dir DIR] [--no-local-settings]`: run a function app locally.

Logs go to stderr, one line per invocation. SIGTERM or Ctrl-C stops accepting
requests, stops the durable engine and exits 0.
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
    args = parser.parse_args(argv)
    configure_logging()
    log = logging.getLogger("devhost")

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


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: worker threads still inside a user function would hold the interpreter open.
    os._exit(code)
