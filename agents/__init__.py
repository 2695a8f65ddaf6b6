"""Billing tools for Azure AI agents, which reach Stripe only through spendgate's proxy.

- `agents.tools`: the tools (`charge_stripe`, `get_charge_status`, `list_customer_charges`).
- `agents.charge`: what `charge_stripe` does (invoice check, card, claim-first charge, answers).
- `agents.idempotency`: the charge identity and the attempt's idempotency key.
- `agents.schema`: the tools' JSON schemas (strict, with patterns) for every style.
- `agents.messages`: what the model reads when a tool fails (including STOP).
- `agents.foundry`: azure-ai-projects 2.x agents and the client-side tool loop (never a broken chain).
- `agents.classic`: azure-ai-agents 1.x threads and runs with auto function calls (no locked threads).
- `agents.queue_tools`: the same tools as queue-triggered Azure Functions tools.
- `agents.queue_agents`: agents (2.x and classic) that use the queue tools.
- `agents.example`: `python -m agents.example`, one conversation against the fake or a real project.

See docs/agents.md.
"""
