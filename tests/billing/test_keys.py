"""Idempotent issue and revoke of a run's keys, over an in-memory stand-in for VaultService.

The real VaultService is exercised by the end-to-end tests; here only the per-label logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from billing import keys
from billing.keys import revoke_run_keys, usd
from billing.payloads import KeyIssued, KeyRequest


class MemoryVault:
    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.issued: list[Mapping[str, Any]] = []

    def issue_in_app(self, request: Mapping[str, Any]) -> dict[str, Any]:
        key_id = f"k{len(self.keys)}"
        self.issued.append(request)
        self.keys[key_id] = {"key_id": key_id, "label": request["label"], "status": "active", "spent_cents": 0}
        return {"key_id": key_id, "label": request["label"], "expires_at": "x"}

    def revoke(self, key_id: str) -> dict[str, Any]:
        self.keys[key_id]["status"] = "revoked"
        return {"key_id": key_id, "status": "revoked"}

    def list(self, label: str | None = None, limit: int = 100, continuation: str | None = None) -> dict[str, Any]:
        rows = [k for k in self.keys.values() if label is None or k["label"] == label]
        start = int(continuation or 0)
        page = rows[start : start + 1]  # one per page, to exercise paging
        more = start + 1 < len(rows)
        return {"data": page, "continuation": str(start + 1) if more else None}

    def spend(self, label: str) -> dict[str, Any]:
        spent = sum(k["spent_cents"] for k in self.keys.values() if k["label"] == label)
        return {"label": label, "spent_cents": spent, "pending_cents": 0}


class MemoryMarks:
    """Stopped labels; `stop_during_issue` marks a label while the key is being minted."""

    def __init__(self, stop_during_issue: str | None = None) -> None:
        self.stopped: set[str] = set()
        self.stop_during_issue = stop_during_issue
        self.looked = 0

    def mark(self, label: str, now: datetime) -> None:
        self.stopped.add(label)

    def is_stopped(self, label: str) -> bool:
        self.looked += 1
        if self.stop_during_issue == label and self.looked == 2:  # after the first look, before the second
            self.stopped.add(label)
        return label in self.stopped


def issue_run_key(vault: MemoryVault, request: KeyRequest, marks: MemoryMarks | None = None) -> KeyIssued:
    return keys.issue_run_key(vault, request, marks or MemoryMarks())


REQUEST = KeyRequest(
    "azure-durable/r1", "charge", 580000, ("POST /v1/payment_intents",), "2h", {"orchestration_id": "r1"}
)


def test_issue_sends_the_run_policy() -> None:
    vault = MemoryVault()
    issued = issue_run_key(vault, REQUEST)
    assert issued.key_id == "k0" and "vault_key" not in issued.to_dict() and issued.cap_cents == 580000
    assert vault.issued[0] == {
        "vendor": "stripe",
        "label": "azure-durable/r1",
        "daily_usd_cap": "5800.00",
        "total_usd_cap": "5800.00",
        "allowed_endpoints": ["POST /v1/payment_intents"],
        "expires_in": "2h",
        "metadata": {"orchestration_id": "r1", "role": "charge"},
    }


def test_a_retried_issue_revokes_the_orphan_and_keeps_the_run_within_budget() -> None:
    vault = MemoryVault()
    issue_run_key(vault, REQUEST)
    vault.keys["k0"]["spent_cents"] = 2900  # whatever the orphan spent counts against the budget
    again = issue_run_key(vault, REQUEST)
    assert again.superseded == ("k0",)
    assert vault.keys["k0"]["status"] == "revoked"
    assert again.cap_cents == 580000 - 2900
    assert [k["key_id"] for k in vault.keys.values() if k["status"] == "active"] == ["k1"]


def test_no_key_when_the_budget_is_used_up() -> None:
    vault = MemoryVault()
    issue_run_key(vault, REQUEST)
    vault.keys["k0"]["spent_cents"] = 580000
    assert issue_run_key(vault, REQUEST).key_id is None


def test_revoke_covers_every_active_key_under_the_labels_and_is_idempotent() -> None:
    vault = MemoryVault()
    for label in ("azure-durable/r1", "azure-durable/r1", "azure-durable/r1/customers", "azure-durable/other"):
        vault.issue_in_app({"label": label})
    assert revoke_run_keys(vault, ["azure-durable/r1", "azure-durable/r1/customers"]) == ["k0", "k1", "k2"]
    assert vault.keys["k3"]["status"] == "active"
    assert revoke_run_keys(vault, ["azure-durable/r1", "azure-durable/r1/customers"]) == []


def test_usd() -> None:
    assert (usd(290000), usd(5), usd(120)) == ("2900.00", "0.05", "1.20")


def test_a_stopped_label_gets_no_key_and_a_stop_while_minting_revokes_the_new_key() -> None:
    vault, marks = MemoryVault(), MemoryMarks()
    marks.mark(REQUEST.label, datetime(2026, 6, 1))
    issued = issue_run_key(vault, REQUEST, marks)
    assert (issued.key_id, issued.stopped) == (None, True) and vault.keys == {}
    vault = MemoryVault()
    issued = issue_run_key(vault, REQUEST, MemoryMarks(stop_during_issue=REQUEST.label))
    assert (issued.key_id, issued.stopped, issued.superseded) == (None, True, ("k0",))
    assert vault.keys["k0"]["status"] == "revoked"
