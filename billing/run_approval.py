"""Approval of billing runs: which runs wait for a person, and what approve / reject do.

A run waits when it asks to (`require_approval`) or when its budget is at or above
`SPENDGATE_APPROVAL_THRESHOLD_USD`. The start route then fixes, in the orchestrator's input,
until when it waits (`approval_expires_at`: now + the run's `approval_timeout`, at most
`SPENDGATE_APPROVAL_TIMEOUT`, default 24 h); the orchestrator waits for the `approval` event or a
durable timer at that instant, and issues no vault key before it is approved.

Every decision is *one row*, written with a create (`billing.table.RunDecisions`): approve,
reject, stop and the run's own timeout. The first write wins and the others answer
`409 approval_not_pending` with the run's state, so approving twice, approving after the
timeout or after a stop are refused, and a late event never changes a run that was decided.
The row is written before the event is raised; if the timer fires between the two, the
orchestrator's `close_run_approval` finds the approval and the run goes on as approved.
Approve racing stop ends consistent either way: a key is only ever issued after approval, by
`issue_run_key`, which honours the stop marks (`billing.keys`), so the run either never gets
a key or gets one that the stop's revoke finds.

The triggers (`orchestrators/routes.py`) only parse; these functions take the Durable client
and the tables as arguments and run blocking storage calls in threads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from billing.payloads import ApprovalDecision, RunRequest
from billing.plan import charge_label
from core.errors import SpendgateError
from proxy.approvals import decider
from proxy.policy import parse_duration

__all__ = ["NotPending", "approval_of", "decide_run", "decider", "with_approval_window"]

_FINISHED = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class Decisions(Protocol):
    """`billing.table.RunDecisions`."""

    def decide(self, instance_id: str, decision: ApprovalDecision) -> tuple[bool, ApprovalDecision]: ...

    def get(self, instance_id: str) -> ApprovalDecision | None: ...


class Marks(Protocol):
    def is_stopped(self, label: str) -> bool: ...


class EventClient(Protocol):
    """The part of `DurableOrchestrationClient` used here."""

    async def get_status(self, instance_id: str, show_history: bool = False, show_history_output: bool = False,
                         show_input: bool = False) -> Any: ...

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None: ...


class NotPending(SpendgateError):
    """`409 approval_not_pending`, carrying the run's state for the answer's `run` field."""

    def __init__(self, message: str, state: Mapping[str, Any]) -> None:
        super().__init__("approval_not_pending", message)
        self.state = dict(state)

    def body(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().body(), "run": self.state}

    def to_json(self) -> str:
        return json.dumps(self.body())


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def with_approval_window(run: RunRequest, threshold_cents: int | None, timeout: timedelta, now: datetime) -> RunRequest:
    """The run as the orchestrator gets it: with `approval_expires_at` when it must wait for a person."""
    if not run.require_approval and (threshold_cents is None or run.budget_cents < threshold_cents):
        return run
    window = timeout
    if run.approval_timeout is not None:
        window = min(window, parse_duration(run.approval_timeout))
    return replace(run, approval_expires_at=_iso(now + window))


def _status_name(status: Any) -> str | None:
    value = getattr(status, "runtime_status", None)
    return None if value is None else str(getattr(value, "value", value))


def _run_input(status: Any) -> RunRequest | None:
    raw = getattr(status, "input_", None)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return RunRequest.from_dict(raw) if isinstance(raw, Mapping) and "billing_period" in raw else None


def _state(instance_id: str, status: Any, decision: ApprovalDecision | None, expires_at: str | None) -> dict[str, Any]:
    return {"instance_id": instance_id, "runtime_status": _status_name(status),
            "approval": {"expires_at": expires_at, **(decision.to_dict() if decision else {"decision": None})}}


async def decide_run(
    client: EventClient, decisions: Decisions, marks: Marks, instance_id: str, decision: str, who: str,
    reason: str | None, now: datetime,
) -> dict[str, Any]:
    """Approve or reject a waiting run (module doc); `NotPending` when it is not waiting any more."""
    status = await client.get_status(instance_id, show_input=True)
    if status is None or _status_name(status) is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    run = _run_input(status)
    expires_at = run.approval_expires_at if run else None
    if not expires_at:
        raise NotPending(f"billing run {instance_id} does not wait for approval", _state(instance_id, status, None, None))
    made = ApprovalDecision(decision, who, reason, _iso(now))
    if _status_name(status) in _FINISHED or await asyncio.to_thread(marks.is_stopped, charge_label(instance_id)):
        made = ApprovalDecision("stopped", at=_iso(now), reason="the run was stopped")
    elif now >= datetime.fromisoformat(expires_at.replace("Z", "+00:00")):
        made = ApprovalDecision("approval_timeout", at=expires_at, reason="nobody decided in time")
    won, current = await asyncio.to_thread(decisions.decide, instance_id, made)
    if not won or current.decision != decision:
        raise NotPending(f"billing run {instance_id} is not waiting for approval: {current.decision}",
                         _state(instance_id, status, current, expires_at))
    try:
        await client.raise_event(instance_id, "approval", current.to_dict())
    except Exception:  # the instance ended meanwhile (a stop terminated it): say so, with its state
        status = await client.get_status(instance_id)
        raise NotPending(f"billing run {instance_id} ended before the decision reached it",
                         _state(instance_id, status, current, expires_at)) from None
    return _state(instance_id, status, current, expires_at)


async def approval_of(client_status: Any, decisions: Decisions, instance_id: str) -> dict[str, Any] | None:
    """The `approval` part of a run's description: its window and decision (None: it never waited)."""
    run = _run_input(client_status)
    if run is None or not run.approval_expires_at:
        return None
    decision = await asyncio.to_thread(decisions.get, instance_id)
    return {"expires_at": run.approval_expires_at, "waiting": decision is None,
            **(decision.to_dict() if decision else {"decision": None})}
