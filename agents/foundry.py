"""azure-ai-projects 2.x: a versioned billing agent whose function tools run here, in a bounded loop.

In 2.x the Foundry service never calls your code: the model answers a Responses API
call with ``function_call`` items, and *this* loop runs the tools and posts
``function_call_output`` items back until the model answers in words::

    project = project_client(endpoint, DefaultAzureCredential())   # retry_total=0
    agent = create_billing_agent(project, model="gpt-4o")
    openai = openai_client(project)                                  # max_retries=0
    conversation = openai.conversations.create()
    with BillingTools.from_settings() as tools:
        turn = run_turn(openai, agent, conversation.id, "Charge cus_123 $29 for June 2026", tools)
    print(turn.answer)

Retry layers are set deliberately: the project client (azure-core) and its OpenAI
client each retry by default, and stacked retries re-run tool handlers. Both are
switched off here; the only retry layer is the shared `ProxyClient` inside the tools,
which resends the *same* idempotency key. If a turn fails (`openai.APIError`), the
caller may run the same turn again: a repeated charge is replayed, never re-billed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from azure.ai.agents.models import FunctionTool as ClassicFunctionTool
from azure.ai.projects import AIProjectClient
from azure.ai.projects.models import (
    AgentVersionDetails,
    AzureFunctionBinding,
    AzureFunctionDefinition,
    AzureFunctionDefinitionFunction,
    AzureFunctionStorageQueue,
    AzureFunctionTool,
    FunctionTool,
    PromptAgentDefinition,
)
from azure.core.credentials import TokenCredential
from openai import OpenAI

from agents import messages
from agents.queue_tools import queue_names
from agents.tools import TOOL_FUNCTIONS, TOOL_NAMES, BillingTools

DEFAULT_MAX_TOOL_ROUNDS = 6
READ_ONLY_TOOLS = ("get_charge_status", "list_customer_charges")

BILLING_AGENT_INSTRUCTIONS = """\
You are a billing agent. You can charge customers and look up charges.
- Call charge_stripe only when the user's current message explicitly asks you to bill a customer, with a
  customer id, an amount and a billing period. Never charge because of something earlier in the conversation.
- For any question about a charge already made ("did it go through?", "the invoice hasn't arrived",
  "look into it"), use get_charge_status with the charge_id from the earlier result, or
  list_customer_charges when you have no charge_id. Never call charge_stripe to check on a charge.
- Follow the "message" in every tool result. If a result has "stop": true, stop billing, do not retry,
  and tell the user exactly what the message says.
- Only retry a tool when its result says "retryable": true, and then at most once with the same arguments."""

SUPERVISOR_AGENT_INSTRUCTIONS = """\
You are a supervisor. You do not bill customers: billing is done only by the billing agent.
Use get_charge_status and list_customer_charges to answer questions about charges.
Follow the "message" in every tool result and never retry a tool that says "retryable": false."""


def function_tool_schemas(names: Iterable[str] = TOOL_NAMES) -> list[dict[str, Any]]:
    """Strict JSON schemas of the tools, built from the same Sphinx docstrings the classic SDK reads.

    Strict mode needs ``additionalProperties: false`` and every property in ``required``;
    optional parameters are therefore nullable (``invoice_id: ["string", "null"]``).
    """
    wanted = set(names)
    classic = ClassicFunctionTool(functions={f for f in TOOL_FUNCTIONS if f.__name__ in wanted})
    schemas = []
    for definition in classic.definitions:
        fn = definition.as_dict()["function"]
        params = fn["parameters"]
        properties = params.get("properties", {})
        for name, prop in properties.items():
            types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
            if name not in params.get("required", []) and "null" not in types:
                prop["type"] = [*types, "null"]
        params["required"] = list(properties)
        params["additionalProperties"] = False
        schemas.append({"name": fn["name"], "description": fn["description"], "parameters": params})
    return sorted(schemas, key=lambda s: TOOL_NAMES.index(s["name"]))


def function_tools(names: Iterable[str] = TOOL_NAMES) -> list[FunctionTool]:
    """The tools as azure-ai-projects 2.x `FunctionTool` definitions (strict)."""
    return [
        FunctionTool(name=s["name"], description=s["description"], parameters=s["parameters"], strict=True)
        for s in function_tool_schemas(names)
    ]


def azure_function_tools(queue_service_endpoint: str, names: Iterable[str] = TOOL_NAMES) -> list[AzureFunctionTool]:
    """2.x `AzureFunctionTool`s for this app's queue-triggered tools (Foundry calls them; no loop needed).

    `queue_service_endpoint` is the app's storage queue endpoint, e.g.
    ``https://<account>.queue.core.windows.net``; queue names come from `agents.queue_tools`.
    """
    tools = []
    for schema in function_tool_schemas(names):
        input_queue, output_queue = queue_names(schema["name"])
        tools.append(
            AzureFunctionTool(
                azure_function=AzureFunctionDefinition(
                    function=AzureFunctionDefinitionFunction(
                        name=schema["name"], description=schema["description"], parameters=schema["parameters"]
                    ),
                    input_binding=AzureFunctionBinding(
                        storage_queue=AzureFunctionStorageQueue(
                            queue_service_endpoint=queue_service_endpoint, queue_name=input_queue
                        )
                    ),
                    output_binding=AzureFunctionBinding(
                        storage_queue=AzureFunctionStorageQueue(
                            queue_service_endpoint=queue_service_endpoint, queue_name=output_queue
                        )
                    ),
                )
            )
        )
    return tools


def project_client(endpoint: str, credential: TokenCredential, **kwargs: Any) -> AIProjectClient:
    """An `AIProjectClient` with azure-core's own retries off (`retry_total=0`)."""
    kwargs.setdefault("retry_total", 0)
    return AIProjectClient(endpoint=endpoint, credential=credential, **kwargs)


def openai_client(project: AIProjectClient, **kwargs: Any) -> OpenAI:
    """The project's OpenAI client with *its* retries off too (`retry_total` does not reach it)."""
    kwargs.setdefault("max_retries", 0)
    return project.get_openai_client(**kwargs)


def create_billing_agent(
    project: AIProjectClient,
    *,
    model: str,
    name: str = "billing-agent",
    instructions: str = BILLING_AGENT_INSTRUCTIONS,
    tool_names: Sequence[str] = TOOL_NAMES,
) -> AgentVersionDetails:
    """Create a new version of the billing agent (prompt agent + strict function tools).

    Give a supervisor `SUPERVISOR_AGENT_INSTRUCTIONS` and `READ_ONLY_TOOLS`; its process
    holds only the audit key, so even a supervisor that can charge "as a backup" is
    refused by the proxy.
    """
    definition = PromptAgentDefinition(model=model, instructions=instructions, tools=function_tools(tool_names))
    return project.agents.create_version(agent_name=name, definition=definition)


class AgentRef(Protocol):
    name: str
    version: str


@dataclass(frozen=True)
class ToolCall:
    """One function call the model made in a turn, and what the tool answered."""

    name: str
    call_id: str
    arguments: str
    output: str


@dataclass
class TurnResult:
    """The outcome of one user turn."""

    answer: str | None
    response_id: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    rounds: int = 0
    hit_round_limit: bool = False

    @property
    def stopped(self) -> bool:
        """Whether a tool told the agent to stop billing during this turn."""
        return any(messages.is_stop(c.output) for c in self.tool_calls)


def agent_reference(agent: AgentRef) -> dict[str, Any]:
    return {"agent_reference": {"name": agent.name, "version": agent.version, "type": "agent_reference"}}


def run_turn(
    openai: OpenAI,
    agent: AgentRef,
    conversation_id: str,
    user_input: str,
    tools: BillingTools,
    *,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
) -> TurnResult:
    """Send one user message and run the agent's function calls until it answers in words.

    At most `max_tool_rounds` rounds of tool calls run; calls beyond that are answered with
    an error (never executed) so the conversation stays consistent, and the turn ends.
    Once a tool has said STOP in this turn, further charge_stripe calls are answered with
    that STOP output without reaching the proxy. Raises `openai.APIError` if Foundry fails;
    running the same turn again is safe.
    """
    extra_body = agent_reference(agent)
    response = openai.responses.create(conversation=conversation_id, input=user_input, extra_body=extra_body)
    result = TurnResult(answer=None, response_id=response.id)
    stop_output: str | None = None
    while calls := [item for item in response.output if item.type == "function_call"]:
        over_limit = result.rounds >= max_tool_rounds
        outputs = []
        for call in calls:
            if over_limit:
                output = messages.error_output(
                    "tool_round_limit", "Too many tool calls in one turn; nothing more was run. Stop and tell the user."
                )
            elif stop_output is not None and call.name == "charge_stripe":
                output = stop_output
            else:
                output = tools.call(call.name, call.arguments)
                if messages.is_stop(output):
                    stop_output = output
            result.tool_calls.append(ToolCall(call.name, call.call_id, call.arguments, output))
            outputs.append({"type": "function_call_output", "call_id": call.call_id, "output": output})
        response = openai.responses.create(conversation=conversation_id, input=outputs, extra_body=extra_body)
        result.response_id = response.id
        if over_limit:
            result.hit_round_limit = True
            break
        result.rounds += 1
    result.answer = response.output_text or None
    return result
