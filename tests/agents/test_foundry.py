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

from agents.foundry import (
    BILLING_AGENT_INSTRUCTIONS,
    SUPERVISOR_AGENT_INSTRUCTIONS,
    Conversation,
    create_billing_agent,
    openai_client,
    project_client,
    repair_conversation,
    resume,
    run_turn,
)
from agents.queue_agents import azure_function_tools, create_queue_agent
from agents.schema import function_tool_schemas
from agents.tools import BillingTools
from devhost.fake_foundry import FakeCredential, FakeFoundry, call, fail, say
from tests.agents.conftest import AgentStack

JUNE = {"billing_period": "2026-06", "amount_cents": 2900}
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
        self.conversation = Conversation()

    def turn(self, text: str, **kwargs: Any) -> Any:
        return run_turn(self.openai, self.agent, self.conversation, text, self.tools, **kwargs)


VAULT_KEY = "vk_0123456789abcdef0123_" + "x" * 48


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
    assert charge["properties"]["billing_period"]["pattern"] == r"^[0-9]{4}-(0[1-9]|1[0-2]|q[1-4])$"  # point 5
    assert charge["properties"]["invoice_id"]["pattern"] == r"^in_[A-Za-z0-9]{1,100}$"
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


def test_the_sdk_transport_retries_stay_on(foundry: FakeFoundry) -> None:
    """Issue 15 point 4: a 503 from the model endpoint or the project API is retried by the SDKs."""
    project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    oc = openai_client(project, http_client=foundry.openai_http_client())
    foundry.script.extend([fail(503), say("hello")])
    assert oc.responses.create(input="hi", extra_body={}).output_text == "hello"
    assert len(foundry.responses_requests) == 2  # the OpenAI client retried once
    foundry.core_failures = 1
    create_billing_agent(project, model="gpt-4o")
    assert foundry.core_requests == [("POST", "/agents/billing-agent/versions")] * 2  # and so did azure-core


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
def test_a_failed_output_post_is_resubmitted_with_the_same_outputs(stack: AgentStack, foundry: FakeFoundry) -> None:
    """Issue 15 point 3: the outputs POST fails (past the SDK's retries); the conversation is not left broken."""
    customer = stack.new_customer()
    session = Session(foundry, stack.tools(billing=stack.billing_key(), audit=stack.audit_key()))
    args = charge_args(customer)
    # The tool runs, then posting its output fails three times (one try + the SDK's two retries).
    foundry.script.extend([call("charge_stripe", **args), fail(500), fail(500), fail(500)])
    with pytest.raises(openai.InternalServerError):
        session.turn(f"Charge {customer} $29 for June 2026")
    [owed] = session.conversation.pending
    assert owed.output is not None and json.loads(owed.output)["status"] == "succeeded"
    assert foundry.tool_outputs == []  # nothing was stored by the failed requests
    # The next turn first re-sends the same output (the tool does not run again), then the new message.
    foundry.script.extend([say("Charged $29 for June."), say("It went through.")])
    turn = session.turn("Did it go through?")

    [stored] = foundry.outputs_for("charge_stripe")
    assert stored == json.loads(owed.output) and turn.answer == "It went through."
    assert foundry.rejected == [] and session.conversation.pending == []
    assert len(stack.payment_intents(customer)) == 1


@pytest.mark.integration
def test_resume_answers_what_an_interrupted_turn_owes(stack: AgentStack, foundry: FakeFoundry) -> None:
    customer = stack.new_customer()
    session = Session(foundry, stack.tools(billing=stack.billing_key(), audit=stack.audit_key()))
    foundry.script.extend([call("list_customer_charges", customer_id=customer), fail(503), fail(503), fail(503)])
    with pytest.raises(openai.APIStatusError):
        session.turn("What did we bill?")
    state = Conversation.from_json(session.conversation.to_json())  # e.g. kept in a session store
    foundry.script.append(say("Nothing yet."))
    turn = resume(session.openai, session.agent, state, session.tools)
    assert turn is not None and turn.answer == "Nothing yet." and state.pending == []
    assert len(foundry.outputs_for("list_customer_charges")) == 1 and foundry.rejected == []
    assert resume(session.openai, session.agent, state, session.tools) is None


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
def test_round_limit_answers_every_call_and_the_conversation_goes_on(stack: AgentStack, foundry: FakeFoundry) -> None:
    """Issue 15 point 3: calls past the limit get "stopped: round limit"; the next turn is accepted."""
    customer = stack.new_customer()
    session = Session(foundry, stack.tools(billing=stack.billing_key(), audit=stack.audit_key()))
    look = call("list_customer_charges", customer_id=customer)
    # A runaway model: it keeps calling tools, even after the limit (tool_choice="none" makes the service answer in words).
    foundry.script.extend([look, look, look, look])
    turn = session.turn("look", max_tool_rounds=2)
    assert turn.hit_round_limit and turn.rounds == 2 and turn.answer == "(no tools)"
    limited = json.loads(turn.tool_calls[-1].output)
    assert limited["error"] == "tool_round_limit" and limited["message"].startswith("stopped: round limit")
    assert foundry.responses_requests[-1]["tool_choice"] == "none"
    foundry.script.append(say("Here is what I found."))
    assert session.turn("and?").answer == "Here is what I found."
    assert foundry.rejected == [] and session.conversation.pending == []
    assert len(foundry.outputs_for("list_customer_charges")) == 3  # two ran, the third was answered unrun


def test_turns_and_outputs_are_chained_with_previous_response_id(foundry: FakeFoundry) -> None:
    """Issue 15 point 3: as Microsoft's function-tool sample does; no server-side conversation is used."""
    with BillingTools("http://127.0.0.1:9/api/stripe", billing_key=VAULT_KEY) as tools:
        session = Session(foundry, tools)
        foundry.script.extend([call("charge_stripe", customer_id="cus_1", amount_cents=1, billing_period="June",
                                    invoice_id=None), say("That period is not valid."), say("ok")])
        session.turn("bill cus_1 1 cent for June")
        session.turn("thanks")
    first, second, third = foundry.responses_requests
    assert "previous_response_id" not in first and "conversation" not in first
    assert second["previous_response_id"] and second["input"][0]["type"] == "function_call_output"
    assert third["previous_response_id"] not in (None, second["previous_response_id"])  # the turn chains on
    assert session.conversation.previous_response_id not in (second["previous_response_id"], third["previous_response_id"])
    assert json.loads(second["input"][0]["output"])["error"] == "invalid_arguments"


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


def test_repair_answers_the_calls_a_server_side_conversation_was_left_with(foundry: FakeFoundry) -> None:
    """Issue 15 point 3: a conversation= loop that stopped at a function call refused every later turn."""
    project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    oc = openai_client(project, http_client=foundry.openai_http_client())
    conversation = oc.conversations.create().id
    foundry.script.append(call("list_customer_charges", customer_id="cus_1"))
    oc.responses.create(conversation=conversation, input="what did we bill?", extra_body={})  # then the loop died
    with pytest.raises(openai.BadRequestError, match="No tool output found for function call"):
        oc.responses.create(conversation=conversation, input="hello?", extra_body={})

    [answered] = repair_conversation(oc, conversation)

    repaired = foundry.last_output("list_customer_charges")
    assert repaired["error"] == "not_run" and repaired["message"].startswith("stopped: not run")
    assert foundry.tool_outputs[-1]["call_id"] == answered
    foundry.script.append(say("Back again."))
    assert oc.responses.create(conversation=conversation, input="hello?", extra_body={}).output_text == "Back again."
    assert repair_conversation(oc, conversation) == []


def test_a_full_agent_with_the_queue_tools(foundry: FakeFoundry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 point 8: one call creates a 2.x agent whose three tools are the app's queues (names from settings)."""
    monkeypatch.setenv("SPENDGATE_TOOL_QUEUE_PREFIX", "billing-tools")
    project = project_client(foundry.endpoint, FakeCredential(), **foundry.azure_core_kwargs)
    agent = create_queue_agent(project, model="gpt-4o", queue_service_endpoint="https://acct.queue.core.windows.net")
    tools = foundry.agent_versions[-1]["definition"]["tools"]
    assert agent.name == "billing-agent-queues" and [t["type"] for t in tools] == ["azure_function"] * 3
    assert [t["azure_function"]["output_binding"]["storage_queue"]["queue_name"] for t in tools] == [
        "billing-tools-charge-stripe-output", "billing-tools-get-charge-status-output",
        "billing-tools-list-customer-charges-output"]
