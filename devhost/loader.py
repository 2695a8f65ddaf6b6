"""Loading a function app through Microsoft's worker library, and what devhost keeps of it.

`load_function_app` starts the worker (`devhost.worker`), which imports `function_app.py`,
indexes and loads every function with its own checks; a function the worker refuses
stops devhost with the worker's message, as it would stop the app on Azure. What devhost
keeps per function is what the host gets from the worker: its id and its bindings in
function.json shape (`raw_bindings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.worker import Worker, WorkerError


class AppLoadError(RuntimeError):
    """The worker could not index or load the app; the message is the worker's own."""


@dataclass(frozen=True)
class FunctionInfo:
    """One function of the app: its name, worker function id, trigger binding and other bindings."""

    name: str
    function_id: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]

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
    """All functions of a loaded app, by name and by trigger type, and the worker that runs them."""

    functions: dict[str, FunctionInfo]
    app_dir: Path
    worker: Worker

    def of_trigger(self, trigger_type: str) -> list[FunctionInfo]:
        return [f for f in self.functions.values() if f.trigger_type == trigger_type]

    def get(self, name: str) -> FunctionInfo | None:
        return self.functions.get(name)


def load_function_app(app_dir: Path, script: str = "function_app.py") -> FunctionIndex:
    """Start the worker on `app_dir/script` and index what it loaded; `AppLoadError` names what it refused."""
    app_dir = app_dir.resolve()
    if not (app_dir / script).exists():
        raise FileNotFoundError(f"{app_dir / script} not found")
    worker = Worker(app_dir, script_file=script)
    try:
        loaded = worker.start()
    except WorkerError as exc:
        worker.stop()
        raise AppLoadError(f"the Python worker could not load {app_dir / script}: {exc.message}") from exc
    if not loaded:
        worker.stop()
        raise AppLoadError(f"the Python worker found no functions in {app_dir / script}")
    functions: dict[str, FunctionInfo] = {}
    for fn in loaded:
        direction_in = [b for b in fn.bindings if str(b.get("direction", "")).upper() == "IN"]
        trigger = next(b for b in direction_in if str(b.get("type", "")).endswith("Trigger"))
        functions[fn.name] = FunctionInfo(fn.name, fn.function_id, trigger, fn.bindings)
    return FunctionIndex(functions, app_dir, worker)
