"""`python -m agents.example` runs one billing conversation against the fake Foundry and the real local app."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devhost.services import REPO_ROOT
from tests.agents.conftest import AgentStack
from tests.conftest import FUNCTION_KEY, STRIPE_TEST_SECRET

pytestmark = pytest.mark.integration


def test_the_example_charges_once_and_says_already_charged(stack: AgentStack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPENDGATE_", "AZURE_AI_"))}
    env.update(SPENDGATE_PROXY_URL=stack.proxy_url, STRIPE_API_BASE=stack.app.localstripe.url,
               STRIPE_SECRET_KEY=STRIPE_TEST_SECRET, DEVHOST_FUNCTION_KEY=FUNCTION_KEY)
    done = subprocess.run([sys.executable, "-m", "agents.example"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "foundry: fake service" in out
    assert out.count("tool:  charge_stripe(") == 2 and "-> succeeded: Charged once." in out
    assert "-> already_charged: already charged: pi_" in out or "-> succeeded: already charged: pi_" in out
    customer = out.split("user:    Charge ", 1)[1].split(" ", 1)[0]
    [intent] = stack.payment_intents(customer)
    assert intent["status"] == "succeeded" and f"payment {intent['id']} is succeeded" in out
