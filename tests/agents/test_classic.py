"""azure-ai-agents 1.x: the module-level tools in a ToolSet, auto-called by `runs.create_and_process`.

The classic `AgentsClient` talks to the fake Foundry over real HTTP; the tools read their
configuration from app settings (as deployed) and charge through the real proxy.
"""

from __future__ import annotations

import json

import pytest
from azure.ai.agents.models import RunStatus
from azure.core.exceptions import HttpResponseError

from agents.classic import agents_client, build_toolset, create_billing_agent, run_message
from agents.queue_agents import AzureFunctionTools, queue_toolset
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


def test_one_toolset_holds_all_three_queue_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 point 8: ToolSet.add refuses a second AzureFunctionTool; AzureFunctionTools holds the three."""
    monkeypatch.setenv("SPENDGATE_TOOL_QUEUE_PREFIX", "billing-tools")
    toolset = queue_toolset("https://acct.queue.core.windows.net")
    assert [type(t) for t in toolset._tools] == [AzureFunctionTools]
    names = [d.as_dict()["azure_function"]["input_binding"]["storage_queue"]["queue_name"] for d in toolset.definitions]
    assert names == ["billing-tools-charge-stripe-input", "billing-tools-get-charge-status-input",
                     "billing-tools-list-customer-charges-input"]  # queue names come from the setting


def test_azure_function_tool_definitions_point_at_the_app_queues() -> None:
    definitions = [d.as_dict() for d in queue_toolset("https://acct.queue.core.windows.net").definitions]
    charge = next(
        d["azure_function"] for d in definitions if d["azure_function"]["function"]["name"] == "charge_stripe"
    )
    assert charge["input_binding"]["storage_queue"] == {
        "queue_service_endpoint": "https://acct.queue.core.windows.net",
        "queue_name": "spendgate-tool-charge-stripe-input",
    }
    assert charge["output_binding"]["storage_queue"]["queue_name"] == "spendgate-tool-charge-stripe-output"
    assert charge["function"]["parameters"]["additionalProperties"] is False
    assert charge["function"]["parameters"]["properties"]["billing_period"]["pattern"].startswith("^[0-9]{4}-")


@pytest.mark.integration
def test_a_failed_poll_is_retried_and_submit_tool_outputs_carries_every_call(
    configured: AgentStack, foundry: FakeFoundry
) -> None:
    """Issue 15 point 3 (classic): one 503 on a status poll no longer ends the run (transport retries on)."""
    customer = configured.new_customer()
    client = agents_client(foundry.endpoint, FakeCredential(), retry_backoff_factor=0.01, **foundry.azure_core_kwargs)
    agent = create_billing_agent(client, model="gpt-4o", toolset=build_toolset())
    thread = client.threads.create()
    args = {"customer_id": customer, "amount_cents": 2900, "billing_period": "2026-06"}
    # Two parallel calls in one requires_action: the fake refuses a submit that lacks either id.
    foundry.classic_runs.append([[("charge_stripe", args), ("list_customer_charges", {"customer_id": customer})]])
    foundry.core_fail_on.append(("GET", r"/threads/[^/]+/runs/[^/]+", 503))

    run = run_message(client, agent.id, thread.id, f"Charge {customer} $29 for 2026-06", polling_interval=0)

    assert run.status == RunStatus.COMPLETED and foundry.rejected == []
    assert foundry.last_output("charge_stripe")["status"] == "succeeded"
    assert len(configured.payment_intents(customer)) == 1


@pytest.mark.integration
def test_a_run_left_active_is_cancelled_so_the_message_can_be_retried(
    configured: AgentStack, foundry: FakeFoundry
) -> None:
    """Issue 15 point 3 (classic): it used to answer 400 "Can't add messages to … while a run … is active"."""
    customer = configured.new_customer()
    client = agents_client(foundry.endpoint, FakeCredential(), retry_backoff_factor=0.01, **foundry.azure_core_kwargs)
    agent = create_billing_agent(client, model="gpt-4o", toolset=build_toolset())
    thread = client.threads.create()
    args = {"customer_id": customer, "amount_cents": 2900, "billing_period": "2026-06"}
    foundry.classic_runs.append([[("charge_stripe", args)]])
    # Polls fail past the SDK's retries, and the cancel right after fails too: the run stays active.
    foundry.core_fail_on.extend([("GET", r"/threads/[^/]+/runs/[^/]+", 503)] * 10)
    foundry.core_fail_on.extend([("POST", r"/threads/[^/]+/runs/[^/]+/cancel", 503)] * 10)
    with pytest.raises(HttpResponseError):
        run_message(client, agent.id, thread.id, f"Charge {customer} $29 for 2026-06", polling_interval=0)
    assert any(path.endswith("/cancel") for _, path in foundry.core_requests)
    foundry.core_fail_on.clear()  # the service is back

    foundry.classic_runs.append([[("charge_stripe", args)]])
    run = run_message(client, agent.id, thread.id, f"Charge {customer} $29 for 2026-06", polling_interval=0)

    assert run.status == RunStatus.COMPLETED
    assert any("while a run" in r for r in foundry.rejected) is False
    assert foundry.last_output("charge_stripe")["status"] == "succeeded"
    assert len(configured.payment_intents(customer)) == 1
