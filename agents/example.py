"""`python -m agents.example`: one billing conversation, end to end, with the real SDKs.

Two turns of a billing agent (azure-ai-projects 2.x, `agents.foundry`): "charge this customer
$29 for 2026-06", then "the June invoice hasn't arrived, look into it" — where the model
calls charge_stripe again (a thread replay) before it looks the payment up. The charge
reaches Stripe once; the second call answers "already charged: <pi id>".

- **Foundry:** the fake service (`devhost.fake_foundry`, a scripted model) unless both
  ``AZURE_AI_PROJECT_ENDPOINT`` and ``AZURE_AI_MODEL_DEPLOYMENT_NAME`` are set; then a real
  project, signed in with `DefaultAzureCredential` (the signed-in identity needs the
  *Azure AI User* role on the project).
- **spendgate:** the app `make run` serves (``SPENDGATE_PROXY_URL``, default
  ``http://localhost:7071/api/stripe``). Without ``SPENDGATE_BILLING_KEY`` /
  ``SPENDGATE_AUDIT_KEY`` it issues a one-hour pair through the admin API with the local
  function key (local.settings.json), and without ``--customer`` it makes a customer with a
  card in the local Stripe (localstripe) the app uses.

This file is a local example, not part of the function app (.funcignore leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from agents.foundry import Conversation, create_billing_agent, openai_client, project_client, run_turn
from agents.tools import BillingTools

ROOT = Path(__file__).resolve().parent.parent
BILLING = ["POST /v1/payment_intents"]
AUDIT = ["GET /v1/payment_intents/*", "GET /v1/payment_intents", "GET /v1/charges/*", "GET /v1/charges",
         "GET /v1/customers/*", "GET /v1/payment_methods", "GET /v1/invoices/*"]


def local_settings() -> dict[str, str]:
    """The Values of local.settings.json (else of the sample: what `make run` uses), the environment first."""
    values: dict[str, str] = {}
    for name in ("local.settings.json", "local.settings.sample.json"):
        if (ROOT / name).exists():
            values = dict(json.loads((ROOT / name).read_text()).get("Values", {}))
            break
    return {**values, **{k: v for k, v in os.environ.items() if v}}


def issue_keys(app_url: str, function_key: str) -> tuple[str, str]:
    """A billing and an audit vault key, one hour each, from the admin API."""
    keys = []
    for role, endpoints, cap in (("billing", BILLING, 100), ("audit", AUDIT, 0.01)):
        body = {"vendor": "stripe", "label": f"agents-example/{role}", "daily_usd_cap": cap,
                "allowed_endpoints": endpoints, "expires_in": "1h"}
        resp = httpx.post(f"{app_url}/api/vault/keys", json=body, headers={"x-functions-key": function_key}, timeout=30)
        resp.raise_for_status()
        keys.append(str(resp.json()["vault_key"]))
    return keys[0], keys[1]


def local_customer(settings: dict[str, str]) -> str:
    from devhost.seed import create_customer  # local Stripe only

    with httpx.Client(base_url=settings["STRIPE_API_BASE"], auth=(settings["STRIPE_SECRET_KEY"], ""), timeout=30) as c:
        return create_customer(c, name=f"Example {uuid.uuid4().hex[:6]}")


def scripted_model(fake: Any, customer: str) -> None:
    """What the fake model does: the two turns of the module docstring."""
    from devhost.fake_foundry import call

    charge = {"customer_id": customer, "amount_cents": 2900, "billing_period": "2026-06", "invoice_id": None}

    def summary(fake: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = fake.last_output("charge_stripe")
        return [fake.message_item(f"Charged {customer} $29.00 for 2026-06: payment {out.get('charge_id')} is "
                                  f"{out.get('status')}.")]

    def look_up(fake: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [fake.function_call_item("get_charge_status", {"charge_id": fake.last_output("charge_stripe")["charge_id"]})]

    def status(fake: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = fake.last_output("get_charge_status")
        return [fake.message_item(f"The June payment {out['charge_id']} {out['status']}; it was charged once. "
                                  "The invoice email may be delayed.")]

    fake.script.extend([call("charge_stripe", **charge), summary, call("charge_stripe", **charge), look_up, status])


@contextmanager
def foundry(stack: ExitStack) -> Iterator[tuple[Any, Any, str, Any]]:
    """(project client, OpenAI client, deployment name, the fake or the real endpoint)."""
    endpoint, model = os.environ.get("AZURE_AI_PROJECT_ENDPOINT"), os.environ.get("AZURE_AI_MODEL_DEPLOYMENT_NAME")
    if endpoint and model:
        from azure.identity import DefaultAzureCredential

        project = stack.enter_context(project_client(endpoint, stack.enter_context(DefaultAzureCredential())))
        yield project, stack.enter_context(openai_client(project)), model, endpoint
        return
    from devhost.fake_foundry import FakeCredential, FakeFoundry

    fake = stack.enter_context(FakeFoundry())
    project = stack.enter_context(project_client(fake.endpoint, FakeCredential(), **fake.azure_core_kwargs))
    yield project, stack.enter_context(openai_client(project, http_client=fake.openai_http_client())), "gpt-4o", fake


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customer", help="a Stripe customer id (default: a new customer in the local Stripe)")
    args = parser.parse_args(argv)
    settings = local_settings()
    proxy_url = settings.get("SPENDGATE_PROXY_URL") or "http://localhost:7071/api/stripe"
    billing, audit = settings.get("SPENDGATE_BILLING_KEY"), settings.get("SPENDGATE_AUDIT_KEY")
    if not (billing and audit):
        app_url = proxy_url.removesuffix("/api/stripe")
        billing, audit = issue_keys(app_url, settings.get("DEVHOST_FUNCTION_KEY", "local-dev-function-key"))
    customer = args.customer or local_customer(settings)
    with ExitStack() as stack, foundry(stack) as (project, client, model, fake):
        agent = create_billing_agent(project, model=model, name="billing-agent-example")
        real = isinstance(fake, str)
        print(f"foundry: {fake if real else 'fake service (devhost.fake_foundry)'}")
        print(f"agent:   {agent.name} version {agent.version}, model {model}")
        if not real:
            scripted_model(fake, customer)
        tools = stack.enter_context(BillingTools(proxy_url, billing_key=billing, audit_key=audit))
        conversation = Conversation()
        for text in (f"Charge {customer} $29 for 2026-06.",
                     "The customer says the June invoice hasn't arrived. Can you look into it?"):
            print(f"\nuser:    {text}")
            turn = run_turn(client, agent, conversation, text, tools)
            for c in turn.tool_calls:
                out = json.loads(c.output)
                print(f"  tool:  {c.name}({c.arguments})")
                print(f"         -> {out.get('error') or out.get('status')}: {out['message'][:110]}")
            print(f"agent:   {turn.answer}")
        project.agents.delete_version(agent_name=agent.name, agent_version=agent.version)  # no version pile-up
    return 0


if __name__ == "__main__":
    sys.exit(main())
