"""azure-ai-projects 2.x: the real SDKs against a fake Foundry, the tools against the real proxy.

Each scenario is one of the ways agents double-charge (seeds 000/004). The model is
scripted; what is asserted is real state: payment intents in localstripe and audit rows
in the proxy's ledger.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from azure.core.exceptions import HttpResponseError

from agents.foundry import (
    BILLING_AGENT_INSTRUCTIONS,
    SUPERVISOR_AGENT_INSTRUCTIONS,
    azure_function_tools,
    create_billing_agent,
    function_tool_schemas,
    openai_client,
    project_client,
    run_turn,
)
from agents.tools import BillingTools
from tests.agents.conftest import AgentStack
from tests.agents.fake_foundry import FakeCredential, FakeFoundry, call, fail, say

JUNE = {"billing_period": "June 2026", "amount_cents": 2900}
FOLLOW_UP = "The customer says the June invoice hasn't arrived — can you look into it?"


class Session:
    """A billing agent version, an OpenAI client and a conversation on the fake Foundry."""

    def __init__(self, foundry: FakeFoundry, tools: BillingTools, *, supervisor: bool = False) -> None:
        self.foundry, self.tools = foundry, tools
        self.project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
        self.agent = create_billing_agent(
            self.project,
            model="gpt-4o",
            name="supervisor" if supervisor else "billing-agent",
            instructions=SUPERVISOR_AGENT_INSTRUCTIONS if supervisor else BILLING_AGENT_INSTRUCTIONS,
        )
        self.openai = openai_client(self.project, http_client=foundry.openai_http_client())
        self.conversation = self.openai.conversations.create().id

    def turn(self, text: str) -> Any:
        return run_turn(self.openai, self.agent, self.conversation, text, self.tools)


def charge_args(customer: str, **overrides: Any) -> dict[str, Any]:
    return {"customer_id": customer, **JUNE, "invoice_id": None, **overrides}


# --- unit: definitions and retry layers --------------------------------------------------------
def test_function_tools_have_strict_schemas_from_the_sphinx_docstrings() -> None:
    schemas = {s["name"]: s for s in function_tool_schemas()}
    assert list(schemas) == ["charge_stripe", "get_charge_status", "list_customer_charges"]
    charge = schemas["charge_stripe"]["parameters"]
    assert charge["additionalProperties"] is False
    assert charge["required"] == ["customer_id", "amount_cents", "billing_period", "invoice_id"]
    assert charge["properties"]["amount_cents"]["type"] == "integer"
    assert charge["properties"]["invoice_id"]["type"] == ["string", "null"]
    assert "US cents" in charge["properties"]["amount_cents"]["description"]
    assert "read-only" in schemas["get_charge_status"]["description"]
    assert "ONCE" in schemas["charge_stripe"]["description"]


def test_create_billing_agent_posts_a_prompt_agent_with_strict_function_tools(foundry: FakeFoundry) -> None:
    project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    version = create_billing_agent(project, model="gpt-4o")
    definition = foundry.agent_versions[-1]["definition"]
    assert (version.name, version.version) == ("billing-agent", "1")
    assert definition["kind"] == "prompt" and definition["model"] == "gpt-4o"
    assert "get_charge_status" in definition["instructions"]
    assert [t["name"] for t in definition["tools"]] == ["charge_stripe", "get_charge_status", "list_customer_charges"]
    assert all(t["type"] == "function" and t["strict"] is True for t in definition["tools"])


def test_both_client_retry_layers_are_off(foundry: FakeFoundry) -> None:
    project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    oc = openai_client(project, http_client=foundry.openai_http_client())
    foundry.script.append(fail(503))
    with pytest.raises(openai.APIStatusError):
        oc.responses.create(input="hi", extra_body={})
    assert len(foundry.responses_requests) == 1  # the OpenAI client did not retry
    foundry.core_failures = 1
    with pytest.raises(HttpResponseError):
        create_billing_agent(project, model="gpt-4o")
    assert foundry.core_requests == [("POST", "/agents/billing-agent/versions")]  # nor did azure-core


# --- integration: the double-charge scenarios ------------------------------------------------
@pytest.mark.integration
def test_lost_response_the_same_function_call_twice_charges_once(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    session = Session(foundry, stack.tools(billing=stack.billing_key(), audit=stack.audit_key()))
    args = charge_args(customer)
    foundry.script.extend([call("charge_stripe", **args), call("charge_stripe", **args), say("Charged $29 for June.")])

    turn = session.turn(f"Charge {customer} $29 for June 2026")

    first, second = foundry.outputs_for("charge_stripe")
    assert first["replayed"] is False and second["replayed"] is True
    assert first["charge_id"] == second["charge_id"] and first["idempotency_key"] == second["idempotency_key"]
    assert turn.answer == "Charged $29 for June." and turn.rounds == 2
    [intent] = stack.payment_intents(customer)
    assert intent["id"] == first["charge_id"] and intent["amount"] == 2900 and intent["status"] == "succeeded"


@pytest.mark.integration
def test_retried_run_resubmitting_identical_arguments_charges_once(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    session = Session(foundry, stack.tools(billing=stack.billing_key(), audit=stack.audit_key()))
    args = charge_args(customer)
    # The tool runs, then posting its output fails: the turn fails after the charge was made.
    foundry.script.extend([call("charge_stripe", **args), fail(500)])
    with pytest.raises(openai.InternalServerError):
        session.turn(f"Charge {customer} $29 for June 2026")
    # The application retries the whole turn; the model re-submits the same arguments
    # (spelled differently this time).
    foundry.script.extend([call("charge_stripe", **charge_args(customer, billing_period="2026-06")), say("Done.")])
    turn = session.turn(f"Charge {customer} $29 for June 2026")

    first, second = foundry.outputs_for("charge_stripe")
    assert first["replayed"] is False and second["replayed"] is True and first["charge_id"] == second["charge_id"]
    assert turn.answer == "Done."
    assert len(foundry.responses_requests) == 4  # no client-side retry hid in between
    assert len(stack.payment_intents(customer)) == 1


@pytest.mark.integration
def test_thread_replay_on_a_follow_up_charges_once_and_then_reads(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    billing, audit = stack.billing_key(), stack.audit_key()
    session = Session(foundry, stack.tools(billing=billing, audit=audit))
    args = charge_args(customer)
    foundry.script.extend([call("charge_stripe", **args), say("Charged $29 for June.")])
    session.turn(f"Charge {customer} $29 for June 2026")

    # Follow-up: the model first re-runs the charge from thread history, then looks it up.
    foundry.script.extend(
        [
            call("charge_stripe", **args),
            lambda fake, body: [
                fake.function_call_item(
                    "get_charge_status", {"charge_id": fake.last_output("charge_stripe")["charge_id"]}
                )
            ],
            say("The June payment succeeded; the invoice email may be delayed."),
        ]
    )
    turn = session.turn(FOLLOW_UP)

    charge_id = foundry.outputs_for("charge_stripe")[0]["charge_id"]
    assert foundry.last_output("charge_stripe")["replayed"] is True
    status = foundry.last_output("get_charge_status")
    assert (
        status["charge_id"] == charge_id and status["status"] == "succeeded" and status["billing_period"] == "2026-06"
    )
    assert [c.name for c in turn.tool_calls] == ["charge_stripe", "get_charge_status"]
    assert len(stack.payment_intents(customer)) == 1
    # The read went out with the audit key; the billing key only ever POSTed (once forwarded, once replayed).
    reads = [r for r in stack.audit_rows(audit["key_id"]) if r["method"] == "GET" and charge_id in r["path"]]
    assert reads and all(r["decision"] == "forwarded" for r in reads)
    posts = sorted(r["decision"] for r in stack.audit_rows(billing["key_id"]))
    assert posts == ["forwarded", "replayed"]


@pytest.mark.integration
def test_supervisor_holding_only_the_audit_key_cannot_charge(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    audit = stack.audit_key()
    session = Session(foundry, stack.tools(audit=audit), supervisor=True)  # it can charge "as a backup"
    foundry.script.extend(
        [call("charge_stripe", **charge_args(customer)), say("I can't bill; the billing agent will.")]
    )

    turn = session.turn(f"The billing agent timed out; charge {customer} $29 for June 2026 as a backup.")

    out = foundry.last_output("charge_stripe")
    assert (
        out["error"] == "endpoint_not_allowed" and out["retryable"] is False and "nothing was charged" in out["message"]
    )
    assert turn.answer is not None
    assert stack.payment_intents(customer) == []
    refused = [r for r in stack.audit_rows(audit["key_id"]) if r["method"] == "POST"]
    assert [r["decision"] for r in refused] == ["endpoint_not_allowed"]  # the proxy said 403


@pytest.mark.integration
def test_spent_cap_tells_the_model_to_stop_and_nothing_more_reaches_stripe(
    stack: AgentStack, foundry: FakeFoundry
) -> None:
    customer = stack.new_customer()
    billing = stack.billing_key(daily_usd_cap=50)
    session = Session(foundry, stack.tools(billing=billing, audit=stack.audit_key()))
    foundry.script.extend(
        [
            call("charge_stripe", **charge_args(customer)),
            call("charge_stripe", **charge_args(customer, billing_period="2026-07")),
            call("charge_stripe", **charge_args(customer, billing_period="2026-08")),  # a model ignoring STOP
            say("Billing stopped: the spending limit was reached."),
        ]
    )
    turn = session.turn(f"Charge {customer} $29 for June, July and August 2026")

    june, july, august = foundry.outputs_for("charge_stripe")
    assert june["status"] == "succeeded"
    for refused in (july, august):
        assert refused["error"] == "spend_cap_exceeded" and refused["stop"] is True and refused["retryable"] is False
        assert refused["message"].startswith("STOP:") and "Tell the user" in refused["message"]
    assert turn.stopped
    # A new turn trying again is refused by the proxy itself.
    foundry.script.extend([call("charge_stripe", **charge_args(customer, billing_period="2026-09")), say("Stopped.")])
    session.turn("Try September then.")
    assert foundry.last_output("charge_stripe")["error"] == "spend_cap_exceeded"
    assert len(stack.payment_intents(customer)) == 1
    decisions = [r["decision"] for r in stack.audit_rows(billing["key_id"])]
    assert sorted(decisions) == ["forwarded", "spend_cap_exceeded", "spend_cap_exceeded"]  # August never left


@pytest.mark.integration
def test_round_limit_ends_a_runaway_turn(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    session = Session(foundry, tools)
    foundry.script.extend([call("list_customer_charges", customer_id=customer)] * 3 + [say("Giving up.")])
    turn = run_turn(session.openai, session.agent, session.conversation, "look", tools, max_tool_rounds=2)
    assert turn.hit_round_limit and turn.rounds == 2 and turn.answer == "Giving up."
    assert json.loads(turn.tool_calls[-1].output)["error"] == "tool_round_limit"


def test_azure_function_tools_for_2x_point_at_the_app_queues() -> None:
    tools = [t.as_dict() for t in azure_function_tools("https://acct.queue.core.windows.net")]
    assert [t["type"] for t in tools] == ["azure_function"] * 3
    status = next(t["azure_function"] for t in tools if t["azure_function"]["function"]["name"] == "get_charge_status")
    assert status["input_binding"] == {
        "type": "storage_queue",
        "storage_queue": {
            "queue_service_endpoint": "https://acct.queue.core.windows.net",
            "queue_name": "spendgate-tool-get-charge-status-input",
        },
    }
    assert status["output_binding"]["storage_queue"]["queue_name"] == "spendgate-tool-get-charge-status-output"
