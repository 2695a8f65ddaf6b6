"""The run routes' logic over a stand-in Durable client (no host): 409, 404, revoke-then-terminate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from billing import runs
from billing.payloads import ChargeItem, RunRequest
from core.errors import SpendgateError
from tests.billing.test_keys import MemoryMarks, MemoryVault

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RUN = RunRequest("2026-06", 100, customers=(ChargeItem("cus_1", 100),))


class FakeClient:
    def __init__(self, log: list[str], existing: dict[str, str] | None = None) -> None:
        self.log = log
        self.existing = dict(existing or {})
        self.started: list[tuple[str, str | None, Any]] = []

    async def start_new(self, name: str, instance_id: str | None = None, client_input: Any = None) -> str:
        self.started.append((name, instance_id, client_input))
        return instance_id or "generated"

    async def get_status(
        self, instance_id: str, show_history: bool = False, show_history_output: bool = False, show_input: bool = False
    ) -> Any:
        status = self.existing.get(instance_id)
        if status is None:
            return SimpleNamespace(runtime_status=None)  # what the SDK gives for an unknown id
        now = datetime(2026, 6, 1, tzinfo=UTC)
        return SimpleNamespace(
            runtime_status=SimpleNamespace(value=status),
            created_time=now,
            last_updated_time=now,
            custom_status={"done": 1},
            output=None,
            input_=RUN.to_dict() if show_input else None,
            history=[] if show_history else None,
        )

    async def terminate(self, instance_id: str, reason: str) -> None:
        self.log.append(f"terminate {instance_id}")


class MemoryIndex:
    def __init__(self) -> None:
        self.recorded: list[str] = []

    def record(self, instance_id: str, created: datetime) -> None:
        self.recorded.append(instance_id)


class LoggingVault(MemoryVault):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def revoke(self, key_id: str) -> dict[str, Any]:
        self.log.append(f"revoke {key_id}")
        return super().revoke(key_id)


def test_start_passes_the_run_and_refuses_an_existing_instance_id() -> None:
    client = FakeClient([], {"taken": "Running"})
    vault, index, marks = MemoryVault(), MemoryIndex(), MemoryMarks()
    assert asyncio.run(runs.start_run(client, RUN, "fresh", vault, marks, index)) == "fresh"
    assert client.started == [("billing_run", "fresh", RUN.to_dict())]
    generated = asyncio.run(runs.start_run(client, RUN, None, vault, marks, index))  # an id is chosen and indexed first
    assert index.recorded == ["fresh", generated] and client.started[1][1] == generated
    with pytest.raises(SpendgateError) as err:
        asyncio.run(runs.start_run(client, RUN, "taken", vault, marks, index))
    assert (err.value.code, err.value.status, err.value.param) == ("run_exists", 409, "instance_id")
    # A purged run leaves no instance, but its keys still carry the run's label.
    vault.issue_in_app({"label": "azure-durable/purged"})
    with pytest.raises(SpendgateError) as err:
        asyncio.run(runs.start_run(client, RUN, "purged", vault, marks, index))
    assert err.value.code == "run_exists"
    marks.mark("azure-durable/stopped", NOW)  # a stopped id stays stopped, even with no key and no instance
    with pytest.raises(SpendgateError) as err:
        asyncio.run(runs.start_run(client, RUN, "stopped", vault, marks, index))
    assert err.value.code == "run_exists"
    assert len(client.started) == 2 and index.recorded == ["fresh", generated]


class LoggingMarks(MemoryMarks):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def mark(self, label: str, now: datetime) -> None:
        self.log.append(f"mark {label}")
        super().mark(label, now)


def test_stop_marks_the_labels_then_revokes_the_keys_then_terminates() -> None:
    log: list[str] = []
    vault = LoggingVault(log)
    vault.issue_in_app({"label": "azure-durable/r1"})
    vault.issue_in_app({"label": "azure-durable/r1/customers"})
    result = asyncio.run(runs.stop_run(FakeClient(log, {"r1": "Running"}), vault, "r1", LoggingMarks(log), NOW))
    assert log == [
        "mark azure-durable/r1", "mark azure-durable/r1/customers", "revoke k0", "revoke k1", "terminate r1"
    ]
    assert result == {"instance_id": "r1", "revoked_key_ids": ["k0", "k1"], "terminated": True}


def test_a_finished_run_is_not_terminated_and_unknown_runs_are_404() -> None:
    log: list[str] = []
    assert (
        asyncio.run(
            runs.stop_run(FakeClient(log, {"r1": "Completed"}), LoggingVault(log), "r1", MemoryMarks(), NOW)
        )["terminated"]
        is False
    )
    assert log == []
    for call in (
        runs.describe_run(FakeClient([]), "nope"),
        runs.stop_run(FakeClient([]), MemoryVault(), "nope", MemoryMarks(), NOW),
    ):
        with pytest.raises(SpendgateError) as err:
            asyncio.run(call)
        assert err.value.status == 404


def test_describe_shows_status_progress_and_output() -> None:
    described = asyncio.run(runs.describe_run(FakeClient([], {"r1": "Running"}), "r1"))
    assert described["runtime_status"] == "Running" and described["progress"] == {"done": 1}


class AuditedVault(MemoryVault):
    """A vault whose run key has audit rows (newest first, two per page)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows

    def audit(self, key_id: str, limit: int = 50, continuation: str | None = None) -> dict[str, Any]:
        start = int(continuation or 0)
        more = start + 2 < len(self.rows)
        return {"data": self.rows[start : start + 2], "continuation": str(start + 2) if more else None}


def test_a_stopped_run_lists_its_items_from_the_audit_log() -> None:
    rows = [  # newest first, as the vault answers
        {"idempotency_key": "r1-1", "decision": "vault_key_revoked", "amount": 100, "time": "t4"},
        {"idempotency_key": "r1-0", "decision": "replayed", "amount": 100, "stripe_object_id": "pi_1", "time": "t3"},
        {"idempotency_key": "r1-0", "decision": "forwarded", "upstream_status": 200, "amount": 100,
         "stripe_object_id": "pi_1", "time": "t2"},
        {"idempotency_key": "other-0", "decision": "forwarded", "upstream_status": 200, "amount": 5, "time": "t1"},
        {"idempotency_key": "r1-2", "decision": "forwarded", "upstream_status": 402, "amount": 100, "time": "t0"},
    ]
    vault = AuditedVault(rows)
    vault.issue_in_app({"label": "azure-durable/r1"})
    declines = {"r1-2": "pi_declined"}  # what the proxy's stored answer to the decline names
    described = asyncio.run(runs.describe_run(FakeClient([], {"r1": "Terminated"}), "r1", vault,
                                              lambda key_id, idem: declines.get(idem)))
    assert described["items_source"] == "history+audit"
    assert [(i["item_index"], i["outcome"], i["object_id"], i["code"]) for i in described["items"]] == [
        (0, "charged", "pi_1", None),
        (1, "revoked", None, "vault_key_revoked"),
        (2, "declined", "pi_declined", None),
    ]
    assert described["progress"]["counts"] == {"charged": 1, "revoked": 1, "declined": 1}
    assert described["items"][0]["customer_id"] == "cus_1"  # from the run's input
    running = asyncio.run(runs.describe_run(FakeClient([], {"r1": "Running"}), "r1", vault))
    assert "items" not in running
