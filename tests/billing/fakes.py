"""A stand-in Durable context that drives the billing orchestrators' generators in-process.

Activities are Python callables (raising = the activity failed after all its retries);
sub-orchestrations are driven recursively with the SDK's `orchestrator_generator_wrapper`,
the same way the SDK's own samples unit-test orchestrators.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.durable_functions.testing import orchestrator_generator_wrapper


class FakeTask:
    """A completed task: `.result` returns the value or raises the failure, like the SDK's."""

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self._value, self._error = value, error

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class Call:
    kind: str  # "activity", "sub" or "timer"
    name: str
    input: Any
    instance_id: str | None = None


@dataclass
class FakeContext:
    instance_id: str
    input: Any
    activities: dict[str, Callable[[Any], Any]]
    sub_orchestrators: dict[str, Callable[[FakeContext], Generator[Any, Any, Any]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    current_utc_datetime: datetime = datetime(2026, 6, 1, tzinfo=UTC)

    def get_input(self) -> Any:
        return self.input

    def set_custom_status(self, status: Any) -> None:
        self.statuses.append(status)

    def call_activity_with_retry(self, name: str, retry: Any, input_: Any = None) -> FakeTask:
        self.calls.append(Call("activity", name, input_))
        try:
            return FakeTask(self.activities[name](input_))
        except Exception as exc:
            return FakeTask(error=exc)

    def call_sub_orchestrator(self, name: str, input_: Any = None, instance_id: str | None = None) -> FakeTask:
        self.calls.append(Call("sub", name, input_, instance_id))
        child = FakeContext(instance_id or "", input_, self.activities, self.sub_orchestrators, self.calls)
        try:
            return FakeTask(drive(self.sub_orchestrators[name], child))
        except Exception as exc:
            return FakeTask(error=exc)

    def create_timer(self, fire_at: datetime) -> FakeTask:
        self.calls.append(Call("timer", "timer", fire_at))
        self.current_utc_datetime = fire_at
        return FakeTask(None)

    def task_all(self, tasks: list[FakeTask]) -> FakeTask:
        for task in tasks:
            if task.failed:
                return FakeTask(error=_first_error(task))
        return FakeTask([t.result for t in tasks])

    def task_any(self, tasks: list[FakeTask]) -> FakeTask:
        """Every fake task is already finished: the first one listed wins (the SDK's rule for
        children that completed before the `task_any`)."""
        return FakeTask(tasks[0])

    def activity_calls(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.kind == "activity" and c.name == name]


def _first_error(task: FakeTask) -> Exception:
    try:
        _ = task.result
    except Exception as exc:
        return exc
    raise AssertionError("task did not fail")


def drive(orchestrator: Callable[[Any], Generator[Any, Any, Any]], context: Any) -> Any:
    """Run an orchestrator generator to completion; returns its output (raises its failure)."""
    last: Any = None
    for last in orchestrator_generator_wrapper(orchestrator(context)):  # noqa: B007 - the last value is the output
        pass
    return last
