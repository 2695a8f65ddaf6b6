"""Reading spendgate's Bicep the way the tests need it: parsed by pycep-parser, nothing evaluated.

pycep turns a `.bicep` file into nested dicts: `parameters`, `variables`, `resources`, `modules`
and `outputs`, each keyed by symbolic name. A reference to a symbol comes out as its bare name
(`"stripeApiBase"`), a literal string as itself, and `a.b.c` as nested `property_accessor`
operators; `dotted()` turns those back into `"a.b.c"`.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

from devhost.services import REPO_ROOT

INFRA = REPO_ROOT / "infra"
MAIN = INFRA / "main.bicep"

Tree = dict[str, Any]


def bicep_files() -> list[Path]:
    """Every Bicep file under infra/, main first."""
    return sorted(INFRA.rglob("*.bicep"), key=lambda p: (p != MAIN, str(p)))


@cache
def parse(path: Path) -> Tree:
    """The pycep tree of one file (parsed once per test session)."""
    return BicepParser().parse(file_path=path)


def module_tree(main: Tree, module_name: str) -> Tree:
    """The parsed file a module of main.bicep points at (local modules only)."""
    module = main["modules"][module_name]
    assert module["type"] == "local", f"module {module_name} is not a local file: {module['detail']}"
    return parse((INFRA / module["detail"]["path"]).resolve())


def body(resource_or_module: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, looking through an `if (...)` condition."""
    config = resource_or_module["config"]
    if "condition" in config and "config" in config:
        return config["config"]
    return config


def dotted(expr: Any) -> str | None:
    """`a.b.c` for a property-access expression, the bare name for a symbol, else None."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        operands = expr["operator"]["operands"]
        head, tail = dotted(operands["operand_1"]), dotted(operands["operand_2"])
        return f"{head}.{tail}" if head and tail else None
    return None


def resources_of_type(tree: Tree, type_: str) -> dict[str, dict[str, Any]]:
    """Resources (not `existing` references) of one type, by symbolic name."""
    return {
        name: res for name, res in tree.get("resources", {}).items() if res["type"] == type_ and not res.get("existing")
    }


def variable(tree: Tree, name: str) -> Any:
    """The value expression of a `var`."""
    return tree["variables"][name]["value"]


def has_default(param: dict[str, Any]) -> bool:
    """Does a `param` have a default value (so callers may leave it out)?"""
    return param.get("default") is not None


def is_secure(param: dict[str, Any]) -> bool:
    """Is a `param` decorated `@secure()`?"""
    return any(d.get("type") == "secure" for d in param.get("decorators", []))


OUTPUT_REFERENCE = re.compile(r"\b(\w+)\.outputs\.(\w+)\b")


def output_references(path: Path) -> set[tuple[str, str]]:
    """Every `module.outputs.name` a file's text mentions, interpolations included."""
    return set(OUTPUT_REFERENCE.findall(path.read_text()))
