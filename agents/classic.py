"""azure-ai-agents 1.x (classic threads and runs): the same tools, called automatically by the SDK.

The classic SDK builds each tool's schema from a plain function — its name, the first
docstring line, Sphinx ``:param:`` lines and annotations — and, once
`enable_auto_function_calls` is on, `runs.create_and_process` runs the functions when a
run is ``requires_action`` and submits their outputs::

    client = agents_client(endpoint, DefaultAzureCredential())     # retry_total=0
    toolset = build_toolset()                                       # refuses a raw sk_ key
    agent = create_billing_agent(client, model="gpt-4o", toolset=toolset)
    thread = client.threads.create()
    run = run_message(client, agent.id, thread.id, "Charge cus_123 $29 for June 2026")

The functions are `agents.tools.charge_stripe` & co., configured from app settings
(`SPENDGATE_PROXY_URL`, `SPENDGATE_BILLING_KEY`, `SPENDGATE_AUDIT_KEY`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from azure.ai.agents import AgentsClient
from azure.ai.agents.models import (
    Agent,
    AzureFunctionStorageQueue,
    AzureFunctionTool,
    FunctionTool,
    ThreadRun,
    ToolSet,
)
from azure.core.credentials import TokenCredential

from agents.foundry import BILLING_AGENT_INSTRUCTIONS, function_tool_schemas
from agents.queue_tools import queue_names
from agents.tools import TOOL_FUNCTIONS, TOOL_NAMES, default_tools

# Outputs carrying an "error" key count toward this; past it the SDK cancels the run.
# Small on purpose: a billing run that keeps failing should end, not loop.
MAX_TOOL_ERRORS_PER_RUN = 3


def build_toolset(names: Iterable[str] = TOOL_NAMES) -> ToolSet:
    """A `ToolSet` with the tools as one `FunctionTool`; checks the configuration first.

    Raises `ToolConfigurationError` when no vault key is configured or a raw Stripe key
    is — the agent must not start rather than fail at its first charge.
    """
    default_tools()
    wanted = set(names)
    toolset = ToolSet()
    toolset.add(FunctionTool(functions={f for f in TOOL_FUNCTIONS if f.__name__ in wanted}))
    return toolset


def agents_client(endpoint: str, credential: TokenCredential, **kwargs: Any) -> AgentsClient:
    """An `AgentsClient` with azure-core's retries off: the tools' proxy client is the one retry layer."""
    kwargs.setdefault("retry_total", 0)
    return AgentsClient(endpoint=endpoint, credential=credential, **kwargs)


def create_billing_agent(
    client: AgentsClient,
    *,
    model: str,
    toolset: ToolSet,
    name: str = "billing-agent",
    instructions: str = BILLING_AGENT_INSTRUCTIONS,
) -> Agent:
    """Create the agent and let the client run its function tools automatically."""
    client.enable_auto_function_calls(toolset, max_retry=MAX_TOOL_ERRORS_PER_RUN)
    return client.create_agent(model=model, name=name, instructions=instructions, toolset=toolset)


def run_message(
    client: AgentsClient, agent_id: str, thread_id: str, content: str, *, polling_interval: int = 1
) -> ThreadRun:
    """Add a user message to the thread and process a run to its end (tools run as needed)."""
    client.messages.create(thread_id=thread_id, role="user", content=content)
    return client.runs.create_and_process(thread_id=thread_id, agent_id=agent_id, polling_interval=polling_interval)


def azure_function_tools(queue_service_endpoint: str, names: Iterable[str] = TOOL_NAMES) -> list[AzureFunctionTool]:
    """Classic `AzureFunctionTool`s pointing at this app's queue-triggered tools (see agents.queue_tools)."""
    tools = []
    for schema in function_tool_schemas(names):
        input_queue, output_queue = queue_names(schema["name"])
        tools.append(
            AzureFunctionTool(
                name=schema["name"],
                description=schema["description"],
                parameters=schema["parameters"],
                input_queue=AzureFunctionStorageQueue(
                    queue_name=input_queue, storage_service_endpoint=queue_service_endpoint
                ),
                output_queue=AzureFunctionStorageQueue(
                    queue_name=output_queue, storage_service_endpoint=queue_service_endpoint
                ),
            )
        )
    return tools
