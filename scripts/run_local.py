"""`make run`: the whole local stack on fixed ports, ready to try with curl.

Starts (or reuses, when already listening) Azurite on 10000–10002 with its data kept in
`.local/azurite/`, and localstripe on 8420; seeds five demo customers on plan `pro`
unless they exist; writes `local.settings.json` from the sample if missing; then runs
the app with `func start` where Core Tools are installed, else with devhost, waits for
`GET /api/health` to answer 200 and prints what runs where, with a curl, a stripe-node and a
stripe-python example against the proxy at Stripe's own paths (`/v1/...`). Ctrl-C stops every process
this script started (reused ones keep running). Running it again is safe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from typing import Any

import httpx

from core.storage import DEVELOPMENT_STORAGE
from devhost.config import host_keys
from devhost.seed import find_customers, seed_customers
from devhost.services import REPO_ROOT, Service, port_open, start_azurite, start_devhost, start_localstripe

LOCAL_DIR = REPO_ROOT / ".local"
AZURITE_DIR = LOCAL_DIR / "azurite"
LOG_DIR = LOCAL_DIR / "logs"
AZURITE_PORTS = (10000, 10001, 10002)
STRIPE_PORT = 8420
APP_PORT = 7071
DEMO_METADATA = {"spendgate_demo": "true"}
DEMO_CUSTOMERS = 5
DEFAULT_FUNCTION_KEY = "local-dev-function-key"


class StartupError(RuntimeError):
    """Something the developer must fix before the stack can run (the message says what)."""


def say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


def ensure_local_settings() -> dict[str, str]:
    """`Values` of local.settings.json, created from the sample on first run."""
    path, sample = REPO_ROOT / "local.settings.json", REPO_ROOT / "local.settings.sample.json"
    if not path.exists():
        shutil.copyfile(sample, path)
        say(f"wrote {path.name} from {sample.name}")
    return {k: str(v) for k, v in (json.loads(path.read_text())["Values"] or {}).items()}


def azurite_answers() -> bool:
    """Is the Azurite on the default ports really an Azure Storage emulator we can use?"""
    from azure.data.tables import TableServiceClient

    try:
        next(iter(TableServiceClient.from_connection_string(DEVELOPMENT_STORAGE).list_tables().by_page()), None)
        return True
    except Exception:
        return False


def ensure_azurite(started: list[Service]) -> str:
    open_ports = [p for p in AZURITE_PORTS if port_open(p)]
    if len(open_ports) == len(AZURITE_PORTS):
        if not azurite_answers():
            raise StartupError(f"ports {AZURITE_PORTS} are taken by something that is not Azurite")
        return "reused (already running)"
    if open_ports:
        raise StartupError(f"Azurite ports {open_ports} are in use but not all of {AZURITE_PORTS}; stop that process")
    started.append(start_azurite(AZURITE_DIR, ports=AZURITE_PORTS, in_memory=False, log_path=LOG_DIR / "azurite.log"))
    return f"started, data in {AZURITE_DIR.relative_to(REPO_ROOT)}/"


def ensure_localstripe(started: list[Service], secret: str) -> str:
    url = f"http://127.0.0.1:{STRIPE_PORT}"
    if port_open(STRIPE_PORT):
        try:
            httpx.get(f"{url}/v1/customers", auth=(secret, ""), timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            raise StartupError(f"port {STRIPE_PORT} is taken by something that is not localstripe ({exc})") from exc
        return "reused (already running)"
    started.append(start_localstripe(port=STRIPE_PORT, log_path=LOG_DIR / "localstripe.log"))
    return "started (in memory: objects live until it stops)"


def ensure_demo_customers(stripe_url: str, secret: str) -> list[str]:
    """Five chargeable demo customers on plan `pro`; creates only the missing ones."""
    existing = [str(c["id"]) for c in find_customers(stripe_url, secret, DEMO_METADATA)]
    missing = max(DEMO_CUSTOMERS - len(existing), 0)
    if missing:
        existing += seed_customers(
            stripe_url, secret, missing, plan="pro", extra_metadata=DEMO_METADATA, start=len(existing) + 1
        )
    return existing


def wait_for_health(app: Service, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise StartupError(f"the app host exited with code {app.proc.returncode} (its log is above)")
        try:
            resp = httpx.get(f"{app.url}/api/health", timeout=5)
            if resp.status_code == 200:
                return dict(resp.json())
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise StartupError(f"GET /api/health did not answer 200 within {timeout:.0f}s (last: {last})")


def banner(
    *,
    host_kind: str,
    azurite: str,
    stripe: str,
    customers: list[str],
    key: str,
    port: int = APP_PORT,
    host_key_lines: str = "",
) -> str:
    base = f"http://localhost:{port}"
    issue = (
        f"curl -s -X POST {base}/api/vault/keys -H 'x-functions-key: {key}' -H 'Content-Type: application/json' "
        """-d '{"vendor":"stripe","label":"demo","daily_usd_cap":50,"allowed_endpoints":["POST /v1/payment_intents"],"""
        """"expires_in":"2h"}'"""
    )
    return f"""
spendgate is running locally
  app                {base}  ({host_kind}; health: {base}/api/health)
  storage (Azurite)  blob :10000  queue :10001  table :10002  ({azurite})
  Stripe (local)     http://127.0.0.1:{STRIPE_PORT}  localstripe, {stripe}
  function key       {key}   (header x-functions-key, or ?code=){host_key_lines}
  operator console   {base}/api/console  (paste the function key once)
  demo customers     {len(customers)} on plan "pro": {", ".join(customers)}
  logs               app below; Azurite and localstripe in {LOG_DIR.relative_to(REPO_ROOT)}/

Try it:
  # 1. issue a vault key (capped at $50/day, payment intents only)
  export VK=$({issue} | python3 -c 'import json,sys; print(json.load(sys.stdin)["vault_key"])')
  # 2. charge $12 through the governed proxy with that key: Stripe's own API at this host (/v1/...)
  curl -s {base}/v1/payment_intents -u "$VK:" -H 'Idempotency-Key: demo-1' \\
       -d amount=1200 -d currency=usd -d confirm=true -d payment_method=pm_card_visa
  # 3. the same with the official SDKs, unchanged but for the key and where the app is
  #    Node (npm stripe; from this checkout, where `make setup` installed it):
  node --input-type=module -e "import Stripe from 'stripe';
    const stripe = new Stripe(process.env.VK, {{host: 'localhost', port: {port}, protocol: 'http'}});
    const pi = await stripe.paymentIntents.create({{amount: 1300, currency: 'usd', confirm: true,
      payment_method: 'pm_card_visa'}});
    console.log(pi.id, pi.status);"
  #    Python (pip stripe):
  .venv/bin/python -c "import os, stripe; \\
    client = stripe.StripeClient(os.environ['VK'], base_addresses={{'api': '{base}'}}); \\
    pi = client.v1.payment_intents.create(params={{'amount': 1400, 'currency': 'usd', 'confirm': True, \\
      'payment_method': 'pm_card_visa'}}); print(pi.id, pi.status)"

Press Ctrl-C to stop everything this command started.
"""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.run_local", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=APP_PORT, help=f"the app's port (default {APP_PORT})")
    port = parser.parse_args(argv).port
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # Explicit for SIGINT too: a shell that starts this in the background ignores SIGINT otherwise.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started: list[Service] = []
    try:
        values = ensure_local_settings()
        secret = values.get("STRIPE_SECRET_KEY") or "sk_test_spendgate_local"
        key = values.get("DEVHOST_FUNCTION_KEY") or DEFAULT_FUNCTION_KEY
        stripe_base = values.get("STRIPE_API_BASE", "")
        if stripe_base.rstrip("/") not in (f"http://127.0.0.1:{STRIPE_PORT}", f"http://localhost:{STRIPE_PORT}"):
            say(f"note: local.settings.json points STRIPE_API_BASE at {stripe_base!r}, not the local Stripe")
        say("starting Azurite …")
        azurite = ensure_azurite(started)
        say("starting localstripe …")
        stripe = ensure_localstripe(started, secret)
        customers = ensure_demo_customers(f"http://127.0.0.1:{STRIPE_PORT}", secret)
        if port_open(port):
            raise StartupError(f"port {port} is in use (is another `make run` or `func start` running?)")
        core_tools = shutil.which("func") is not None
        host_kind = "func" if core_tools else "devhost"
        say(f"starting the app with {'func start' if core_tools else 'python -m devhost'} on port {port} …")
        try:
            app = start_devhost(
                REPO_ROOT,
                {"SPENDGATE_PROXY_URL": f"http://127.0.0.1:{port}/api/stripe"},  # activities call this app's proxy
                port=port,
                timeout=120,
                use_core_tools=core_tools,
                inherit_output=True,
                local_settings=True,
            )
        except (RuntimeError, TimeoutError) as exc:
            raise StartupError(f"the app host did not start: {exc} (its log is above)") from exc
        started.append(app)
        wait_for_health(app)
        keys = host_keys(values)
        host_key_lines = (
            ""
            if core_tools
            else f"\n  master key         {keys.master}   (admin-level routes)"
            f"\n  durable system key {keys.durabletask}   (/runtime/webhooks/durabletask/…; never give it out)"
        )
        print(
            banner(
                host_kind=host_kind,
                azurite=azurite,
                stripe=stripe,
                customers=customers,
                key=key,
                port=port,
                host_key_lines=host_key_lines,
            ),
            flush=True,
        )
        while app.proc.poll() is None:
            time.sleep(0.5)
        say(f"the app host exited with code {app.proc.returncode}")
        return 1
    except KeyboardInterrupt:
        return 0
    except StartupError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for svc in reversed(started):
            say(f"stopping {svc.name} …")
            svc.stop()


if __name__ == "__main__":
    sys.exit(main())
