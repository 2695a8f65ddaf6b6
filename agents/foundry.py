"""azure-ai-projects 2.x: a versioned billing agent whose function tools run here, in a loop that never
leaves a conversation broken.

In 2.x the Foundry service never calls your code: the model answers a Responses API call
with ``function_call`` items, and *this* loop runs the tools and posts
``function_call_output`` items back until the model answers in words::

    project = project_client(endpoint, DefaultAzureCredential())
    agent = create_billing_agent(project, model="<deployment name>")
    client = openai_client(project)
    conversation = Conversation()                 # ours: where the chain stands (to_json / from_json)
    with BillingTools.from_settings() as tools:
        turn = run_turn(client, agent, conversation, "Charge cus_123 $29 for 2026-06", tools)
    print(turn.answer)

**Chaining.** Turns and tool outputs are chained with ``previous_response_id``, as
Microsoft's own function-tool sample does (azure-sdk-for-python,
``sdk/ai/azure-ai-projects/samples/agents/tools/sample_agent_function_tool.py``). A request
that fails creates no response, so re-sending the same input after a failure is safe;
`Conversation` remembers the last response and any calls still owed an output.

**Every function call gets an output.** The service refuses every later request in a chain
or conversation that has an unanswered call ("No tool output found for function call …",
see devhost/fake_foundry.py for the sources). So: calls beyond `max_tool_rounds` are answered
"stopped: round limit" (never run) and the model is asked for words with ``tool_choice="none"``;
an output POST that fails (after the SDK's own retries) keeps its outputs in
``conversation.pending``, and the next `run_turn` or `resume` re-sends those same outputs
(the tools are not run again). `repair_conversation` answers the calls a server-side
conversation (``conversation=``, an older loop) was left with.

**Retries.** The SDKs' transport retries stay on (azure-core: 3 on 500/503/504; openai:
2 on 408/409/429/5xx). They only re-send an HTTP request; a tool runs only after a
successful response, so they never re-run a tool, and without them every 429 from the
model endpoint would fail the turn. The tools' `ProxyClient` retries the proxy with the
same idempotency key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from azure.ai.projects import AIProjectClient
from azure.ai.projects.models import AgentVersionDetails, FunctionTool, PromptAgentDefinition
from azure.core.credentials import TokenCredential
from openai import OpenAI

from agents import messages
from agents.schema import function_tool_schemas
from agents.tools import TOOL_NAMES, BillingTools

DEFAULT_MAX_TOOL_ROUNDS = 6
_LIMIT_GRACE = 8  # answered-but-not-run calls after the limit before the loop gives up (never in practice)
READ_ONLY_TOOLS = ("get_charge_status", "list_customer_charges")

BILLING_AGENT_INSTRUCTIONS = """\
You are a billing agent. You can charge customers and look up charges.
- Call charge_stripe only when the user's current message explicitly asks you to bill a customer, with a
  customer id, an amount and a billing period. Never charge because of something earlier in the conversation.
- billing_period is exactly YYYY-MM (2026-06) or YYYY-qN (2026-q2). Pass invoice_id only when the user names
  an existing Stripe invoice (in_...); otherwise null. Never invent ids.
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


def function_tools(names: Sequence[str] = TOOL_NAMES) -> list[FunctionTool]:
    """The tools as azure-ai-projects 2.x `FunctionTool` definitions (strict, with patterns)."""
    return [
        FunctionTool(name=s["name"], description=s["description"], parameters=s["parameters"], strict=True)
        for s in function_tool_schemas(names)
    ]


def project_client(endpoint: str, credential: TokenCredential, **kwargs: Any) -> AIProjectClient:
    """An `AIProjectClient` (azure-core's transport retries on, as by default)."""
    return AIProjectClient(endpoint=endpoint, credential=credential, **kwargs)


def openai_client(project: AIProjectClient, **kwargs: Any) -> OpenAI:
    """The project's OpenAI client, with the SDK's transport retries on (`max_retries`=2, its default)."""
    kwargs.setdefault("max_retries", 2)
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

    `model` is the model *deployment* name in the Foundry project. Each call creates a new
    version: create it once per deployment (or delete old ones with
    ``project.agents.delete_version``). Give a supervisor `SUPERVISOR_AGENT_INSTRUCTIONS` and
    `READ_ONLY_TOOLS`; its process holds only the audit key, so even a supervisor that
    charges "as a backup" is refused by the proxy.
    """
    definition = PromptAgentDefinition(model=model, instructions=instructions, tools=function_tools(tool_names))
    return project.agents.create_version(agent_name=name, definition=definition)


class AgentRef(Protocol):
    name: str
    version: str


@dataclass
class PendingCall:
    """A function call the service waits on; `output` is set once the tool has answered."""

    name: str
    call_id: str
    arguments: str
    output: str | None = None


@dataclass
class Conversation:
    """Where a chained conversation stands: the response to chain from and the calls it still waits on.

    Keep it (it is small JSON: `to_json` / `from_json`) for as long as the conversation lives.
    """

    previous_response_id: str | None = None
    pending: list[PendingCall] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        data = json.loads(text)
        return cls(data.get("previous_response_id"), [PendingCall(**c) for c in data.get("pending", [])])


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
    client: OpenAI,
    agent: AgentRef,
    conversation: Conversation,
    user_input: str,
    tools: BillingTools,
    *,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
) -> TurnResult:
    """Send one user message and run the agent's function calls until it answers in words.

    Calls an earlier, interrupted turn left pending are answered first (`resume`). Raises
    `openai.APIError` if Foundry fails after the SDK's retries; the conversation then still
    knows what it owes, and the next `run_turn` or `resume` sends it.
    """
    if conversation.pending:
        resume(client, agent, conversation, tools, max_tool_rounds=max_tool_rounds)
    return _loop(client, agent, conversation, user_input, tools, max_tool_rounds)


def resume(
    client: OpenAI,
    agent: AgentRef,
    conversation: Conversation,
    tools: BillingTools,
    *,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
) -> TurnResult | None:
    """Finish an interrupted turn: send the outputs it owes (running only tools that never answered).

    Outputs already computed are re-sent as they are; a call without one runs now (the tools
    are idempotent: a repeated charge is "already charged"). None if nothing was pending.
    """
    if not conversation.pending:
        return None
    return _loop(client, agent, conversation, None, tools, max_tool_rounds)


def _loop(
    client: OpenAI,
    agent: AgentRef,
    conversation: Conversation,
    user_input: str | None,
    tools: BillingTools,
    max_tool_rounds: int,
) -> TurnResult:
    extra_body = agent_reference(agent)
    result = TurnResult(answer=None, response_id=conversation.previous_response_id or "")
    stop_output: str | None = None
    next_input: str | list[dict[str, Any]] | None = user_input
    while True:
        if conversation.pending:
            over_limit = result.rounds >= max_tool_rounds
            for call in conversation.pending:
                if call.output is None:
                    if over_limit:
                        call.output = messages.error_output("tool_round_limit", messages.ROUND_LIMIT)
                    elif stop_output is not None and call.name == "charge_stripe":
                        call.output = stop_output
                    else:
                        call.output = tools.call(call.name, call.arguments)
                        if messages.is_stop(call.output):
                            stop_output = call.output
                    result.tool_calls.append(ToolCall(call.name, call.call_id, call.arguments, call.output))
            next_input = [
                {"type": "function_call_output", "call_id": c.call_id, "output": c.output} for c in conversation.pending
            ]
            result.rounds += 0 if over_limit else 1
            result.hit_round_limit = result.hit_round_limit or over_limit
        options: dict[str, Any] = {"extra_body": extra_body}
        if conversation.previous_response_id:
            options["previous_response_id"] = conversation.previous_response_id
        if result.hit_round_limit:
            options["tool_choice"] = "none"  # the model must answer in words now
        response = client.responses.create(input=next_input or "", **options)
        # Accepted: the outputs are stored, and the chain moves on to this response.
        conversation.previous_response_id = result.response_id = response.id
        conversation.pending = [
            PendingCall(item.name, item.call_id, item.arguments)
            for item in response.output
            if item.type == "function_call"
        ]
        if not conversation.pending:
            result.answer = response.output_text or None
            return result
        if result.hit_round_limit and result.rounds + _LIMIT_GRACE <= len(result.tool_calls):
            # The service kept calling tools despite tool_choice="none": leave the calls to `resume`.
            return result


def repair_conversation(client: OpenAI, conversation_id: str, output: str | None = None) -> list[str]:
    """Answer the function calls a server-side conversation (``conversation=``) was left with.

    Lists the conversation's items and adds a ``function_call_output`` (by default a
    ``not_run`` error: "stopped: not run") for every call that has none, so the conversation
    takes new turns again. Returns the call ids it answered.
    """
    output = output or messages.error_output("not_run", messages.NOT_RUN)
    answered: set[str] = set()
    calls: list[str] = []
    for item in client.conversations.items.list(conversation_id):
        kind, call_id = getattr(item, "type", None), str(getattr(item, "call_id", ""))
        if kind == "function_call":
            calls.append(call_id)
        elif kind == "function_call_output":
            answered.add(call_id)
    missing = [c for c in calls if c not in answered]
    if missing:
        client.conversations.items.create(
            conversation_id,
            items=[{"type": "function_call_output", "call_id": c, "output": output} for c in missing],
        )
    return missing
