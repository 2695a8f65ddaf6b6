"""Billing tools for Azure AI agents, which reach Stripe only through spendgate's proxy.

- `agents.tools`: the tools (`charge_stripe`, `get_charge_status`, `list_customer_charges`).
- `agents.idempotency`: the content-derived idempotency key of a charge.
- `agents.messages`: what the model reads when a tool fails (including STOP).
- `agents.foundry`: azure-ai-projects 2.x agents and the client-side tool loop.
- `agents.classic`: azure-ai-agents 1.x threads and runs with auto function calls.
- `agents.queue_tools`: the same tools as queue-triggered Azure Functions tools.

See docs/agents.md.
"""
