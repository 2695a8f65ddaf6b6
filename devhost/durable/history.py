"""History events as the Durable extension hands them to the Python SDK.

Each builder returns the dict shape the SDK's `HistoryEvent(**event)` reads: `EventType`,
`EventId`, `IsPlayed`, `Timestamp` plus the type's own fields (DTFx's history event
names: `TaskScheduledId`, `TimerId`, `FireAt`, `Result`, `Reason`, `Details`, ...).
Timestamps are ISO-8601 UTC with a `Z`, as DTFx serializes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any


class EventType(IntEnum):
    """DTFx `EventType` values (the SDK's `HistoryEventType`)."""

    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_INSTANCE_CREATED = 7
    SUB_ORCHESTRATION_INSTANCE_COMPLETED = 8
    SUB_ORCHESTRATION_INSTANCE_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_RAISED = 15
    CONTINUE_AS_NEW = 16


# Events that resolve a task the orchestrator scheduled, keyed by the field naming that task.
COMPLETION_KEYS: dict[int, str] = {
    EventType.TASK_COMPLETED: "TaskScheduledId",
    EventType.TASK_FAILED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_FAILED: "TaskScheduledId",
    EventType.TIMER_FIRED: "TimerId",
}
FAILURES = {EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_INSTANCE_FAILED}


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """DTFx's timestamp text: UTC, microseconds, `Z`."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def event(type_: EventType, event_id: int = -1, timestamp: datetime | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "EventType": int(type_),
        "EventId": event_id,
        "IsPlayed": False,
        "Timestamp": iso(timestamp or utc_now()),
        **fields,
    }


def orchestrator_started(at: datetime) -> dict[str, Any]:
    return event(EventType.ORCHESTRATOR_STARTED, timestamp=at)


def orchestrator_completed(at: datetime) -> dict[str, Any]:
    return event(EventType.ORCHESTRATOR_COMPLETED, timestamp=at)


def execution_started(
    name: str, input_text: str | None, at: datetime, parent_instance_id: str | None
) -> dict[str, Any]:
    # `Version` must be present: the SDK reads it from ExecutionStarted (AttributeError otherwise).
    parent = {"OrchestrationInstance": {"InstanceId": parent_instance_id}} if parent_instance_id else None
    return event(
        EventType.EXECUTION_STARTED, timestamp=at, Name=name, Input=input_text, Version="", ParentInstance=parent
    )


def task_scheduled(event_id: int, name: str, input_text: str | None, at: datetime) -> dict[str, Any]:
    return event(EventType.TASK_SCHEDULED, event_id, at, Name=name, Input=input_text)


def task_completed(scheduled_id: int, result_text: str | None) -> dict[str, Any]:
    return event(EventType.TASK_COMPLETED, TaskScheduledId=scheduled_id, Result=result_text)


def task_failed(scheduled_id: int, reason: str, details: str) -> dict[str, Any]:
    return event(EventType.TASK_FAILED, TaskScheduledId=scheduled_id, Reason=reason, Details=details)


def timer_created(event_id: int, fire_at: datetime, at: datetime) -> dict[str, Any]:
    return event(EventType.TIMER_CREATED, event_id, at, FireAt=iso(fire_at))


def timer_fired(timer_id: int, fire_at: str) -> dict[str, Any]:
    return event(EventType.TIMER_FIRED, TimerId=timer_id, FireAt=fire_at)


def sub_orchestration_created(
    event_id: int, name: str, instance_id: str, input_text: str | None, at: datetime
) -> dict[str, Any]:
    return event(
        EventType.SUB_ORCHESTRATION_INSTANCE_CREATED, event_id, at, Name=name, InstanceId=instance_id, Input=input_text
    )


def sub_orchestration_completed(scheduled_id: int, result_text: str | None) -> dict[str, Any]:
    return event(EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED, TaskScheduledId=scheduled_id, Result=result_text)


def sub_orchestration_failed(scheduled_id: int, reason: str, details: str) -> dict[str, Any]:
    return event(
        EventType.SUB_ORCHESTRATION_INSTANCE_FAILED, TaskScheduledId=scheduled_id, Reason=reason, Details=details
    )


def event_raised(name: str, input_text: str | None) -> dict[str, Any]:
    return event(EventType.EVENT_RAISED, Name=name, Input=input_text)


def execution_terminated(reason: str | None) -> dict[str, Any]:
    return event(EventType.EXECUTION_TERMINATED, Input=reason)


def execution_completed(status: str, result_text: str | None, at: datetime) -> dict[str, Any]:
    type_ = EventType.EXECUTION_COMPLETED if status == "Completed" else EventType.EXECUTION_FAILED
    return event(type_, timestamp=at, OrchestrationStatus=status, Result=result_text)


def continue_as_new(input_text: str | None, at: datetime) -> dict[str, Any]:
    return event(EventType.CONTINUE_AS_NEW, timestamp=at, Input=input_text)
