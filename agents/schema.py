"""The tools' JSON schemas, one source for every style (2.x function tools, classic, queue tools).

The classic SDK builds a schema from a function's signature and Sphinx ``:param:`` lines
(`agents.tools`); this module takes those and adds what a signature cannot say:

- **strict mode** (2.x, and harmless elsewhere): ``additionalProperties: false`` and every
  property ``required``, so optional parameters become nullable (``invoice_id: ["string", "null"]``);
- **patterns** for the values that make up the charge identity (`agents.idempotency`):
  ``billing_period`` is ``YYYY-MM`` or ``YYYY-qN``, ``invoice_id`` is ``in_…``, ids are
  ``cus_…``. A strict-mode model cannot send another spelling; the code refuses one anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from azure.ai.agents.models import FunctionDefinition, FunctionTool, FunctionToolDefinition

from agents.idempotency import CUSTOMER_PATTERN, INVOICE_PATTERN, PERIOD_PATTERN
from agents.tools import TOOL_FUNCTIONS, TOOL_NAMES

PATTERNS: dict[str, dict[str, str]] = {
    "charge_stripe": {
        "customer_id": CUSTOMER_PATTERN,
        "billing_period": PERIOD_PATTERN,
        "invoice_id": INVOICE_PATTERN,
    },
    "list_customer_charges": {"customer_id": CUSTOMER_PATTERN},
    "get_charge_status": {"charge_id": r"^(pi|ch)_[A-Za-z0-9]{1,100}$"},
}


def function_tool_schemas(names: Iterable[str] = TOOL_NAMES) -> list[dict[str, Any]]:
    """Strict JSON schemas of the tools (name, description, parameters), in `TOOL_NAMES` order."""
    wanted = set(names)
    classic = FunctionTool(functions={f for f in TOOL_FUNCTIONS if f.__name__ in wanted})
    schemas = []
    for definition in classic.definitions:
        fn = definition.as_dict()["function"]
        params = fn["parameters"]
        properties = params.get("properties", {})
        for name, prop in properties.items():
            types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
            if name not in params.get("required", []) and "null" not in types:
                prop["type"] = [*types, "null"]
            if pattern := PATTERNS.get(fn["name"], {}).get(name):
                prop["pattern"] = pattern
        params["required"] = list(properties)
        params["additionalProperties"] = False
        schemas.append({"name": fn["name"], "description": fn["description"], "parameters": params})
    return sorted(schemas, key=lambda s: TOOL_NAMES.index(s["name"]))


class BillingFunctionTool(FunctionTool):
    """The classic `FunctionTool` of the module-level tools, with the schemas above.

    It runs the functions exactly as `FunctionTool` does; only the definitions the agent is
    created with carry the patterns and strictness a signature cannot express.
    """

    def __init__(self, names: Iterable[str] = TOOL_NAMES) -> None:
        wanted = tuple(names)
        super().__init__(functions={f for f in TOOL_FUNCTIONS if f.__name__ in wanted})
        self._definitions = [
            FunctionToolDefinition(
                function=FunctionDefinition(name=s["name"], description=s["description"], parameters=s["parameters"])
            )
            for s in function_tool_schemas(wanted)
        ]
