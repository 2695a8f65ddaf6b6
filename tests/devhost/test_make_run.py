"""`make run` itself: it comes up healthy, its printed examples (curl, stripe-node, stripe-python)
and `scripts/smoke.sh` pass against it, and Ctrl-C stops everything it started.

It uses the fixed ports of the README (Azurite 10000–10002, localstripe 8420), reusing
them when a developer's own `make run` already holds them, and the app on a free port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

from devhost.services import REPO_ROOT, free_port, port_open
from scripts.run_local import AZURITE_PORTS, STRIPE_PORT

pytestmark = pytest.mark.integration


def _example_commands(banner: str) -> str:
    """The banner's 'Try it' shell lines, as a script."""
    lines = banner.split("Try it:", 1)[1].split("Press Ctrl-C", 1)[0].splitlines()
    return "\n".join(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def test_make_run_serves_the_printed_example_and_ctrl_c_stops_everything_it_started() -> None:
    port = free_port()
    reused = {p for p in (*AZURITE_PORTS, STRIPE_PORT) if port_open(p)}
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"RUN_ARGS=--port {port}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in "".join(output):
            assert proc.poll() is None, "make run exited early:\n" + "".join(output)[-3000:]
            assert time.monotonic() < deadline, "no banner within 3 minutes:\n" + "".join(output)[-3000:]
            time.sleep(0.2)
        banner = "".join(output)
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).status_code == 200
        assert re.search(r"demo customers\s+5 on plan", banner)
        assert "sk_test" not in banner

        example = _example_commands(banner) + '\necho\necho "${VK:0:3}"'
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", example], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        lines = ran.stdout.splitlines()
        assert lines[-1] == "vk_", ran.stdout  # the example's first step got a vault key
        out = ran.stdout.rsplit("\nvk_", 1)[0]
        # After curl's JSON, the stripe-node and stripe-python examples each print "<id> succeeded".
        sdk_ids = re.findall(r"^(pi_\w+) succeeded$", out, re.MULTILINE)
        assert len(sdk_ids) == 2, out
        charged = json.loads(out[: out.index(f"{sdk_ids[0]} succeeded")])
        assert charged["object"] == "payment_intent" and charged["status"] == "succeeded"
        assert charged["amount"] == 1200
        assert len({charged["id"], *sdk_ids}) == 3  # three charges: curl, Node, Python

        # The deploy smoke test (issue a key, health, revoke, denied) passes against it too.
        smoke = subprocess.run(["bash", "scripts/smoke.sh", f"http://127.0.0.1:{port}", "local-dev-function-key"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        reader.join(timeout=5)
    log = "".join(output)
    assert "stopping devhost" in log or "stopping func" in log, log[-2000:]
    for p in [port, *({*AZURITE_PORTS, STRIPE_PORT} - reused)]:
        assert not port_open(p), f"port {p} still open after Ctrl-C:\n{log[-2000:]}"
