"""Agents whose tools Foundry runs through this app's Storage queues (Azure Functions tools).

Foundry puts each call on the tool's input queue and reads the reply from its output queue
(`agents.queue_tools` serves them). Nothing runs in your process, so no loop is needed::

    # azure-ai-projects 2.x: the tools are a plain list in the agent definition
    agent = create_queue_agent(project, model="<deployment name>",
                               queue_service_endpoint="https://<account>.queue.core.windows.net")

    # azure-ai-agents 1.x (classic): one Tool holding all three, so a ToolSet takes it
    toolset = queue_toolset("https://<account>.queue.core.windows.net")
    agent = client.create_agent(model="<deployment name>", name="billing-agent",
                                instructions=BILLING_AGENT_INSTRUCTIONS, toolset=toolset)

Why `AzureFunctionTools`: the classic `ToolSet.add` refuses a second tool of a type it already
holds, and the SDK's `AzureFunctionTool` holds one function; this one holds the three
definitions (the SDK then sends them as three ``azure_function`` tools).

The Azure Functions tool needs the *Standard* agent setup (the project brings its own
storage account, where the queues live); the agent's identity gets Storage Queue Data
Message Sender on each input queue and Storage Queue Data Message Processor on each output
queue — never a role on the whole account (docs/agents.md, style 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.ai.agents.models import AzureFunctionBinding as ClassicBinding
from azure.ai.agents.models import AzureFunctionDefinition as ClassicAzureFunctionDefinition
from azure.ai.agents.models import AzureFunctionStorageQueue as ClassicQueue
from azure.ai.agents.models import AzureFunctionToolDefinition, FunctionDefinition, Tool, ToolResources, ToolSet
from azure.ai.projects import AIProjectClient
from azure.ai.projects.models import (
    AgentVersionDetails,
    AzureFunctionBinding,
    AzureFunctionDefinition,
    AzureFunctionDefinitionFunction,
    AzureFunctionStorageQueue,
    AzureFunctionTool,
    PromptAgentDefinition,
)

from agents.foundry import BILLING_AGENT_INSTRUCTIONS
from agents.queue_tools import queue_names
from agents.schema import function_tool_schemas
from agents.tools import TOOL_NAMES
from core.settings import Settings


def azure_function_tools(
    queue_service_endpoint: str, names: Sequence[str] = TOOL_NAMES, settings: Settings | None = None
) -> list[AzureFunctionTool]:
    """2.x `AzureFunctionTool`s for this app's queue-triggered tools (queue names from settings)."""
    tools = []
    for schema in function_tool_schemas(names):
        input_queue, output_queue = queue_names(schema["name"], settings)
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


def create_queue_agent(
    project: AIProjectClient,
    *,
    model: str,
    queue_service_endpoint: str,
    name: str = "billing-agent-queues",
    instructions: str = BILLING_AGENT_INSTRUCTIONS,
    tool_names: Sequence[str] = TOOL_NAMES,
    settings: Settings | None = None,
) -> AgentVersionDetails:
    """A 2.x prompt agent whose three tools are this app's queue tools."""
    tools: list[Any] = list(azure_function_tools(queue_service_endpoint, tool_names, settings))
    definition = PromptAgentDefinition(model=model, instructions=instructions, tools=tools)
    return project.agents.create_version(agent_name=name, definition=definition)


class AzureFunctionTools(Tool[AzureFunctionToolDefinition]):
    """Classic: every queue tool in one `Tool`, so one `ToolSet` can hold them all (module docstring)."""

    def __init__(
        self, queue_service_endpoint: str, names: Sequence[str] = TOOL_NAMES, settings: Settings | None = None
    ) -> None:
        self._definitions = []
        for schema in function_tool_schemas(names):
            input_queue, output_queue = queue_names(schema["name"], settings)
            self._definitions.append(
                AzureFunctionToolDefinition(
                    azure_function=ClassicAzureFunctionDefinition(
                        function=FunctionDefinition(
                            name=schema["name"], description=schema["description"], parameters=schema["parameters"]
                        ),
                        input_binding=ClassicBinding(
                            storage_queue=ClassicQueue(
                                queue_name=input_queue, storage_service_endpoint=queue_service_endpoint
                            )
                        ),
                        output_binding=ClassicBinding(
                            storage_queue=ClassicQueue(
                                queue_name=output_queue, storage_service_endpoint=queue_service_endpoint
                            )
                        ),
                    )
                )
            )

    @property
    def definitions(self) -> list[AzureFunctionToolDefinition]:
        return self._definitions

    @property
    def resources(self) -> ToolResources:
        return ToolResources()

    def execute(self, tool_call: Any) -> Any:
        """Never called: the agent service runs these tools through the queues."""
        return None


def queue_toolset(
    queue_service_endpoint: str, names: Sequence[str] = TOOL_NAMES, settings: Settings | None = None
) -> ToolSet:
    """A classic `ToolSet` holding all the queue tools (`AzureFunctionTools`)."""
    toolset = ToolSet()
    toolset.add(AzureFunctionTools(queue_service_endpoint, names, settings))
    return toolset
