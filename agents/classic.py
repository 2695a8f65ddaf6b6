"""azure-ai-agents 1.x (classic threads and runs): the same tools, called automatically by the SDK.

The classic SDK builds each tool from a plain function — its name, the first docstring
line, Sphinx ``:param:`` lines and annotations (`agents.schema.BillingFunctionTool` adds the
patterns a signature cannot say) — and, once `enable_auto_function_calls` is on,
`runs.create_and_process` runs the functions when a run is ``requires_action`` and submits
every call's output in one request::

    client = agents_client(endpoint, DefaultAzureCredential())      # one client per agent role
    toolset = build_toolset()                                        # refuses a raw sk_ key
    agent = create_billing_agent(client, model="<deployment name>", toolset=toolset)
    thread = client.threads.create()
    run = run_message(client, agent.id, thread.id, "Charge cus_123 $29 for 2026-06")

**Never a locked thread.** While a run is active the service refuses new messages and runs
("Can't add messages to … while a run … is active"). The SDK's transport retries stay on, so
one failed status poll does not end `create_and_process`; if it fails anyway, `run_message`
cancels the run it left active, and it cancels any active run before adding a message, so
retrying the same message works.

`enable_auto_function_calls` is per client: the *last* toolset enabled on a client is the
one its runs call. Give each agent role its own `AgentsClient`.

Classic agents retire on 2027-03-31; new work should use `agents.foundry` (2.x).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from azure.ai.agents import AgentsClient
from azure.ai.agents.models import Agent, ThreadRun, ToolSet
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError

from agents.foundry import BILLING_AGENT_INSTRUCTIONS
from agents.schema import BillingFunctionTool
from agents.tools import TOOL_NAMES, default_tools

log = logging.getLogger(__name__)

# Outputs carrying an "error" key count toward this; past it the SDK cancels the run.
# Small on purpose: a billing run that keeps failing should end, not loop.
MAX_TOOL_ERRORS_PER_RUN = 3
ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")


def build_toolset(names: Sequence[str] = TOOL_NAMES) -> ToolSet:
    """A `ToolSet` with the tools as one `FunctionTool`; checks the configuration first.

    Raises `ToolConfigurationError` when no vault key is configured or a raw Stripe key
    is — the agent must not start rather than fail at its first charge.
    """
    default_tools()
    toolset = ToolSet()
    toolset.add(BillingFunctionTool(names))
    return toolset


def agents_client(endpoint: str, credential: TokenCredential, **kwargs: Any) -> AgentsClient:
    """An `AgentsClient` with azure-core's transport retries on (its default: 3 on 500/503/504)."""
    return AgentsClient(endpoint=endpoint, credential=credential, **kwargs)


def create_billing_agent(
    client: AgentsClient,
    *,
    model: str,
    toolset: ToolSet,
    name: str = "billing-agent",
    instructions: str = BILLING_AGENT_INSTRUCTIONS,
) -> Agent:
    """Create the agent and let this client run its function tools automatically (`model`: a deployment name)."""
    client.enable_auto_function_calls(toolset, max_retry=MAX_TOOL_ERRORS_PER_RUN)
    return client.create_agent(model=model, name=name, instructions=instructions, toolset=toolset)


def cancel_active_runs(client: AgentsClient, thread_id: str, *, wait_seconds: float = 30) -> list[str]:
    """Cancel every run still active on the thread and wait until none is; returns their ids."""
    cancelled = []
    for run in client.runs.list(thread_id=thread_id):
        if run.status in ACTIVE:
            if run.status != "cancelling":
                client.runs.cancel(thread_id=thread_id, run_id=run.id)
            cancelled.append(run.id)
    deadline = time.monotonic() + wait_seconds
    for run_id in cancelled:
        while client.runs.get(thread_id=thread_id, run_id=run_id).status in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} on {thread_id} is still active after cancelling")
            time.sleep(0.5)
    return cancelled


def run_message(
    client: AgentsClient, agent_id: str, thread_id: str, content: str, *, polling_interval: int = 1
) -> ThreadRun:
    """Add a user message to the thread and process a run to its end (tools run as needed).

    A run left active (by an earlier failure) is cancelled first; if this run fails while
    active, it is cancelled before the error is raised, so the same call can be retried.
    """
    if stale := cancel_active_runs(client, thread_id):
        log.warning("cancelled run(s) %s left active on %s", stale, thread_id)
    client.messages.create(thread_id=thread_id, role="user", content=content)
    try:
        return client.runs.create_and_process(thread_id=thread_id, agent_id=agent_id, polling_interval=polling_interval)
    except AzureError:
        with contextlib.suppress(AzureError, TimeoutError):  # best effort: the next run_message retries it
            cancel_active_runs(client, thread_id)
        raise
