"""The official Stripe SDKs, unchanged, through the running app: stripe-node 23.1.0 and stripe-python 16.1.0.

One table of scenarios, run with each SDK (tests/proxy/sdk_runs.py; stripe-node through
tests/proxy/node/scenarios.mjs). Each client gets only the vault key and where the app is, and
calls Stripe's own paths at the root of the app's host (`/v1/...`). The stack is this module's
own: a fresh localstripe (so a list holds only this module's objects), the fault injector in
front of it (tests/proxy/fault_upstream.py) and devhost running function_app.py. A counting
tap in front of the app (tests/billing/faultproxy.py, passing everything) sees every request
an SDK sends, so "retried once" and "never retried" are counted where they happen; objects
are counted in localstripe and spend and decisions read through the admin API. The README's
Node and Python snippets run here as the README prints them (only the port differs).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devhost.seed import iter_objects
from devhost.services import REPO_ROOT, Service, start_devhost, start_localstripe
from tests.billing.faultproxy import PASS, FaultProxy, Seen
from tests.conftest import FUNCTION_KEY, STRIPE_TEST_SECRET, app_settings
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects
from tests.proxy.fault_upstream import FaultUpstream
from tests.proxy.sdk_runs import SDKS, run

pytestmark = pytest.mark.integration

# The Stripe-Version both SDKs pin (docs/proxy.md, "Stripe SDKs and Stripe-Version"). A new SDK
# version that pins another one fails here first: add it to the supported list, or keep the pin.
SUPPORTED_STRIPE_VERSION = "2026-10-28.endive"
ADMIN = {"x-functions-key": FUNCTION_KEY}
# What each SDK sends as its automatic Idempotency-Key on a POST (and keeps across its retries).
AUTO_KEY = {
    "node": re.compile(r"^stripe-node-retry-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
    "python": re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
}


class Tap:
    """Every request the SDKs send to the app, in order (a pass-through FaultProxy rule)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def __call__(self, seen: Seen, attempt: int) -> str:
        with self._lock:
            self.seen.append(seen)
        return PASS

    def since(self, mark: int) -> list[Seen]:
        with self._lock:
            return self.seen[mark:]


@dataclass
class Stack:
    app: Service
    stripe: Service
    fault: FaultUpstream
    tap: Tap
    tap_url: str

    def issue(self, **overrides: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.app.url}/api/vault/keys", json=key_request(**overrides), headers=ADMIN, timeout=30)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def describe(self, key_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.app.url}/api/vault/keys/{key_id}", headers=ADMIN, timeout=30).json())

    def audit(self, key_id: str) -> list[dict[str, Any]]:
        """The key's audit rows, oldest first."""
        page = httpx.get(f"{self.app.url}/api/vault/keys/{key_id}/audit", params={"limit": 200}, headers=ADMIN,
                         timeout=30).json()
        return list(reversed(page["data"]))

    def run(self, sdk: str, key: str, scenario: str, **params: Any) -> tuple[dict[str, Any], list[Seen]]:
        """Run one scenario through the tap; returns the SDK's outcome and the requests it sent."""
        mark = len(self.tap.seen)
        out = run(sdk, self.tap_url, key, scenario, **params)
        sent = self.tap.since(mark)
        assert out["sdk"] == sdk and {s.stripe_version for s in sent} == {SUPPORTED_STRIPE_VERSION}, (out, sent)
        return out, sent


@pytest.fixture(scope="module")
def stack(azurite: Service, artifacts_dir: Path) -> Iterator[Stack]:
    stripe = start_localstripe(log_path=artifacts_dir / "localstripe-sdks.log")
    fault = FaultUpstream(stripe.url, sleep_seconds=4)
    env = app_settings(azurite, stripe, STRIPE_API_BASE=fault.url, SPENDGATE_STRIPE_TIMEOUT_SECONDS="2")
    app = start_devhost(REPO_ROOT, env, log_path=artifacts_dir / "devhost-sdks.log", ready_path="/api/health")
    tap = Tap()
    proxy = FaultProxy(app.url, tap).start()
    try:
        yield Stack(app, stripe, fault, tap, proxy.url)
    finally:
        proxy.stop()
        app.stop()
        fault.stop()
        stripe.stop()


# --- what works ------------------------------------------------------------------------------
@pytest.mark.parametrize("sdk", SDKS)
def test_create_confirm_and_retrieve_a_payment_intent(stack: Stack, sdk: str) -> None:
    key, tag = stack.issue(), new_tag()
    out, sent = stack.run(sdk, key["vault_key"], "create_and_retrieve", amount=2900, tag=tag)
    created = out["result"]["created"]
    assert created["status"] == "succeeded" and created["amount"] == 2900
    assert out["result"]["retrieved"] == created
    assert [o["id"] for o in tagged_objects(stack.stripe.url, tag)] == [created["id"]]
    assert [(s.method, s.path) for s in sent] == [
        ("POST", "/v1/payment_intents"), ("GET", f"/v1/payment_intents/{created['id']}")]
    view = stack.describe(key["key_id"])
    assert (view["spent_cents"], view["pending_cents"]) == (2900, 0)


@pytest.mark.parametrize("sdk", SDKS)
def test_list_with_auto_pagination_sees_every_object_once(stack: Stack, sdk: str) -> None:
    with httpx.Client(base_url=stack.stripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as direct:
        for _ in range(7):  # straight into Stripe: at least 7 objects, so at least 3 pages of 3
            direct.post("/v1/payment_intents", data=pi_params(100, new_tag())).raise_for_status()
    expected = [o["id"] for o in iter_objects(stack.stripe.url, STRIPE_TEST_SECRET, "payment_intents")]
    key = stack.issue()
    out, sent = stack.run(sdk, key["vault_key"], "list_all", limit=3)
    ids = out["result"]["ids"]
    assert len(ids) == len(set(ids)) and set(ids) == set(expected)
    assert len(sent) == math.ceil(len(expected) / 3) >= 3
    assert all((s.method, s.path) == ("GET", "/v1/payment_intents") for s in sent)
    assert [r["decision"] for r in stack.audit(key["key_id"])] == ["forwarded"] * len(sent)


@pytest.mark.parametrize("sdk", SDKS)
def test_automatic_idempotency_key_makes_a_retried_create_one_object(stack: Stack, sdk: str) -> None:
    """Stripe creates the object but the answer is lost: the proxy answers 502 `upstream_unavailable`
    with `Stripe-Should-Retry: true`, the SDK retries once with the Idempotency-Key it generated,
    and the proxy finds the object instead of creating a second. The key turns the proxy's own
    derived keys off, so only the SDK's key can make the retry the same request."""
    key, tag = stack.issue(daily_usd_cap=100, auto_idempotency=False), new_tag()
    assert stack.describe(key["key_id"])["auto_idempotency"] is False
    forwarded_before = len(stack.fault.forwarded)
    stack.fault.arm("drop_after_forward")
    out, sent = stack.run(sdk, key["vault_key"], "create", amount=2900, tag=tag)
    created = out["result"]["created"]
    assert [o["id"] for o in tagged_objects(stack.stripe.url, tag)] == [created["id"]]
    assert len(sent) == 2 and sent[0].idempotency_key == sent[1].idempotency_key  # retried once, same key
    assert AUTO_KEY[sdk].match(sent[0].idempotency_key or ""), sent[0].idempotency_key
    posts = [f for f in stack.fault.forwarded[forwarded_before:] if f[0] == "POST"]
    assert posts == [("POST", "/v1/payment_intents")]  # Stripe saw one create
    rows = stack.audit(key["key_id"])
    assert [r["idempotency_key"] for r in rows] == [sent[0].idempotency_key] * 2
    assert (rows[-1]["decision"], rows[-1]["upstream_status"]) == ("replayed", 200)
    view = stack.describe(key["key_id"])
    assert (view["spent_cents"], view["pending_cents"]) == (2900, 0)


# --- denials: the SDK's own error class, raised once, never retried --------------------------
@dataclass(frozen=True)
class Denial:
    key: dict[str, Any]  # the key's policy
    scenario: str
    error: str  # stripe-python's class; stripe-node's is the same with "Stripe" in front
    status: int
    code: str
    revoke: bool = False


DENIALS = {
    "cap_spent": Denial({"daily_usd_cap": 10}, "create", "CardError", 402, "spend_cap_exceeded"),
    "endpoint_not_allowed": Denial({}, "list_customers", "PermissionError", 403, "endpoint_not_allowed"),
    "revoked_key": Denial({}, "create", "AuthenticationError", 401, "vault_key_revoked", revoke=True),
    "v2_api": Denial({}, "v2_list", "InvalidRequestError", 400, "api_v2_not_supported"),
}


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("case", list(DENIALS))
def test_a_denial_is_the_sdks_error_class_and_is_not_retried(stack: Stack, sdk: str, case: str) -> None:
    denial, tag = DENIALS[case], new_tag()
    key = stack.issue(**denial.key)
    if denial.revoke:
        assert httpx.delete(f"{stack.app.url}/api/vault/keys/{key['key_id']}", headers=ADMIN).status_code == 200
    out, sent = stack.run(sdk, key["vault_key"], denial.scenario, amount=1001, tag=tag)
    expected_class = f"Stripe{denial.error}" if sdk == "node" else denial.error
    assert out["error"] == {"class": expected_class, "status": denial.status, "code": denial.code,
                            "should_retry": "false"}
    assert len(sent) == 1  # the SDK did not retry
    assert tagged_objects(stack.stripe.url, tag) == []
    decisions = [r["decision"] for r in stack.audit(key["key_id"])]
    # /v2 is refused before the key is read, so it leaves no audit row; the others leave exactly one.
    assert decisions == ([] if case == "v2_api" else [denial.code])


@pytest.mark.parametrize("sdk", SDKS)
def test_an_unknown_vault_key_is_an_authentication_error(stack: Stack, sdk: str) -> None:
    key = stack.issue()
    out, sent = stack.run(sdk, key["vault_key"][:-1] + ("A" if key["vault_key"][-1] != "A" else "B"), "create",
                          amount=100, tag=new_tag())
    expected_class = "StripeAuthenticationError" if sdk == "node" else "AuthenticationError"
    assert out["error"] == {"class": expected_class, "status": 401, "code": "vault_key_invalid",
                            "should_retry": "false"}
    assert len(sent) == 1


# --- the routes: one pipeline behind /v1 and /api/stripe/v1 -----------------------------------
def test_root_and_api_stripe_paths_are_one_pipeline(stack: Stack) -> None:
    key, tag = stack.issue(), new_tag()
    auth = {"Authorization": f"Bearer {key['vault_key']}", "Idempotency-Key": f"both-{tag}"}
    with httpx.Client(base_url=stack.app.url, timeout=30) as http:
        first = http.post("/v1/payment_intents", data=pi_params(700, tag), headers=auth)
        again = http.post("/api/stripe/v1/payment_intents", data=pi_params(700, tag), headers=auth)
        assert first.status_code == again.status_code == 200
        assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
        for path in ("/v2/core/events", "/api/stripe/v2/core/events", "/v2"):
            refused = http.get(path, headers=auth)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "api_v2_not_supported"
            assert refused.headers["Stripe-Should-Retry"] == "false"
        for path in ("/V1/payment_intents", "/api/stripe/V1/payment_intents", "/v1"):
            odd = http.get(path, headers=auth)
            assert odd.status_code == 400 and odd.json()["error"]["code"] == "path_invalid", path
    assert [o["id"] for o in tagged_objects(stack.stripe.url, tag)] == [first.json()["id"]]
    assert stack.describe(key["key_id"])["spent_cents"] == 700


# --- the README's snippets, as written there --------------------------------------------------
def _readme_block(lang: str, needle: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.DOTALL)
    return next(b for b in blocks if needle in b)


def _charged_once(stack: Stack, key_id: str) -> None:
    """The key's one charge exists in Stripe, succeeded, and is settled against the cap."""
    rows = stack.audit(key_id)
    assert [(r["method"], r["decision"]) for r in rows] == [("POST", "forwarded"), ("GET", "forwarded")]
    intent = httpx.get(f"{stack.stripe.url}/v1/payment_intents/{rows[0]['stripe_object_id']}",
                       auth=(STRIPE_TEST_SECRET, ""), timeout=30).json()
    assert (intent["status"], intent["amount"], intent["metadata"]["plan"]) == ("succeeded", 2900, "pro")
    assert stack.describe(key_id)["spent_cents"] == 2900


def test_readme_node_snippet_charges_through_the_proxy(stack: Stack, artifacts_dir: Path) -> None:
    key = stack.issue()
    snippet = _readme_block("js", "new Stripe(")
    url = urlsplit(stack.app.url)
    code = snippet.replace("{host: 'localhost', port: 7071,", f"{{host: '{url.hostname}', port: {url.port},")
    assert code != snippet, "the README's Node snippet no longer points at localhost:7071"
    script = artifacts_dir / "readme-node-snippet.mjs"  # inside the checkout: `stripe` resolves from node_modules
    script.write_text(code)
    node = shutil.which("node")
    assert node, "node is not on PATH"
    proc = subprocess.run([node, str(script)], env={**os.environ, "VAULT_KEY": key["vault_key"]},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "succeeded", proc.stdout + proc.stderr
    _charged_once(stack, key["key_id"])


def test_readme_python_snippet_charges_through_the_proxy(stack: Stack) -> None:
    key = stack.issue()
    snippet = _readme_block("python", "stripe.StripeClient(")
    code = snippet.replace('"http://localhost:7071"', f'"{stack.app.url}"')
    assert code != snippet, "the README's Python snippet no longer points at http://localhost:7071"
    exec(compile(code, "README.md", "exec"), {"vault_key": key["vault_key"]})  # verbatim but for the URL
    _charged_once(stack, key["key_id"])
