"""azure-ai-agents 1.x: the module-level tools in a ToolSet, auto-called by `runs.create_and_process`.

The classic `AgentsClient` talks to the fake Foundry over real HTTP; the tools read their
configuration from app settings (as deployed) and charge through the real proxy.
"""

from __future__ import annotations

import json

import pytest
from azure.ai.agents.models import RunStatus

from agents.classic import agents_client, azure_function_tools, build_toolset, create_billing_agent, run_message
from agents.tools import ToolConfigurationError, charge_stripe
from devhost.fake_foundry import FakeCredential, FakeFoundry
from tests.agents.conftest import AgentStack


@pytest.fixture
def configured(stack: AgentStack, monkeypatch: pytest.MonkeyPatch) -> AgentStack:
    """App settings of a billing agent: the proxy URL, a billing key and an audit key."""
    monkeypatch.setenv("SPENDGATE_PROXY_URL", stack.proxy_url)
    monkeypatch.setenv("SPENDGATE_BILLING_KEY", stack.billing_key()["vault_key"])
    monkeypatch.setenv("SPENDGATE_AUDIT_KEY", stack.audit_key()["vault_key"])
    return stack


@pytest.mark.integration
def test_requires_action_then_submit_tool_outputs_charges_once(configured: AgentStack, foundry: FakeFoundry) -> None:
    customer = configured.new_customer()
    client = agents_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    toolset = build_toolset()
    agent = create_billing_agent(client, model="gpt-4o", toolset=toolset)
    thread = client.threads.create()
    args = {"customer_id": customer, "amount_cents": 2900, "billing_period": "2026-06"}
    foundry.classic_runs.append([[("charge_stripe", args)]])

    run = run_message(client, agent.id, thread.id, f"Charge {customer} $29 for June 2026", polling_interval=0)

    assert run.status == RunStatus.COMPLETED
    first = foundry.last_output("charge_stripe")
    assert first["status"] == "succeeded" and first["replayed"] is False
    # A retried run on the same thread re-submits the identical call.
    foundry.classic_runs.append([[("charge_stripe", args)], [("get_charge_status", {"charge_id": first["charge_id"]})]])
    run = run_message(client, agent.id, thread.id, "Did that go through? Try again if not.", polling_interval=0)

    assert run.status == RunStatus.COMPLETED
    assert foundry.last_output("charge_stripe")["replayed"] is True
    assert foundry.last_output("get_charge_status")["status"] == "succeeded"
    [intent] = configured.payment_intents(customer)
    assert intent["id"] == first["charge_id"]


def test_the_agent_definition_carries_the_sphinx_parameter_descriptions(
    foundry: FakeFoundry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPENDGATE_PROXY_URL", "http://127.0.0.1:9/api/stripe")
    monkeypatch.setenv("SPENDGATE_BILLING_KEY", "vk_0123456789abcdef0123_" + "x" * 48)
    client = agents_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    create_billing_agent(client, model="gpt-4o", toolset=build_toolset())
    tools = {t["function"]["name"]: t["function"] for t in foundry.classic_agents[-1]["tools"]}
    params = tools["charge_stripe"]["parameters"]["properties"]
    assert params["amount_cents"] == {"type": "integer", "description": "The amount in US cents, e.g. 2900 for $29.00."}
    assert params["invoice_id"]["type"] == ["string", "null"]
    assert set(tools) == {"charge_stripe", "get_charge_status", "list_customer_charges"}


@pytest.mark.parametrize("raw", ["sk_test_4eC39HqLyjWDarjtT1zdp7dc", "rk_live_abc", "not-a-key"])
def test_the_tools_refuse_to_start_with_a_raw_stripe_key(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDGATE_PROXY_URL", "http://127.0.0.1:9/api/stripe")
    monkeypatch.setenv("SPENDGATE_BILLING_KEY", raw)
    with pytest.raises(ToolConfigurationError) as err:
        build_toolset()
    assert "SPENDGATE_BILLING_KEY" in str(err.value) and raw not in str(err.value)
    # Called anyway (e.g. by an already-built toolset), the function answers with a STOP, never raises.
    out = json.loads(charge_stripe("cus_1", 2900, "2026-06"))
    assert out["error"] == "configuration_error" and out["stop"] is True


def test_the_tools_refuse_to_start_without_any_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDGATE_PROXY_URL", "http://127.0.0.1:9/api/stripe")
    with pytest.raises(ToolConfigurationError):
        build_toolset()


def test_azure_function_tool_definitions_point_at_the_app_queues() -> None:
    tools = azure_function_tools("https://acct.queue.core.windows.net")
    definitions = [d.as_dict() for t in tools for d in t.definitions]
    charge = next(
        d["azure_function"] for d in definitions if d["azure_function"]["function"]["name"] == "charge_stripe"
    )
    assert charge["input_binding"]["storage_queue"] == {
        "queue_service_endpoint": "https://acct.queue.core.windows.net",
        "queue_name": "spendgate-tool-charge-stripe-input",
    }
    assert charge["output_binding"]["storage_queue"]["queue_name"] == "spendgate-tool-charge-stripe-output"
    assert charge["function"]["parameters"]["additionalProperties"] is False
