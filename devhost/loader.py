"""Loading a function app the way the Python worker does: import it, list its functions."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FunctionInfo:
    """One function of the app: its name, trigger binding, other bindings and callable."""

    name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    user_function: Callable[..., Any]
    raw: Any = field(repr=False, default=None)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    def bindings_of(self, type_: str, direction: str | None = None) -> list[dict[str, Any]]:
        return [
            b
            for b in self.bindings
            if b.get("type") == type_ and (direction is None or str(b.get("direction", "")).upper() == direction)
        ]


@dataclass(frozen=True)
class FunctionIndex:
    """All functions of a loaded app, by name and by trigger type."""

    functions: dict[str, FunctionInfo]
    app_dir: Path

    def of_trigger(self, trigger_type: str) -> list[FunctionInfo]:
        return [f for f in self.functions.values() if f.trigger_type == trigger_type]

    def get(self, name: str) -> FunctionInfo | None:
        return self.functions.get(name)


def load_function_app(app_dir: Path, script: str = "function_app.py") -> FunctionIndex:
    """Import `app_dir/script` as module `function_app` and index its functions.

    As the worker does, the app directory goes first on sys.path so the app's own
    packages import; the module-level `FunctionApp` instance (any name) is used.
    """
    app_dir = app_dir.resolve()
    path = app_dir / script
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    spec = importlib.util.spec_from_file_location("function_app", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)

    import azure.functions as func

    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(apps) != 1:
        raise RuntimeError(f"{path} must define exactly one FunctionApp, found {len(apps)}")
    functions: dict[str, FunctionInfo] = {}
    for fn in apps[0].get_functions():
        name = fn.get_function_name()
        if name in functions:
            raise RuntimeError(f"function {name!r} is registered twice")
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next(b for b in bindings if str(b.get("type", "")).endswith("Trigger"))
        functions[name] = FunctionInfo(name, trigger, bindings, fn.get_user_function(), fn)
    return FunctionIndex(functions, app_dir)
