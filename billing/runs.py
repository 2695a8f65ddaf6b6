"""What the billing run routes do, as plain async functions over a Durable client and the vault.

The triggers in `orchestrators/routes.py` only parse and shape responses; these take their
dependencies (`DurableOrchestrationClient`, `VaultService`) as arguments.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from billing.keys import Vault, keys_with_label, revoke_run_keys
from billing.payloads import ItemOutcome, RunRequest
from billing.plan import charge_label, merge_progress, run_labels
from core.errors import SpendgateError

ORCHESTRATOR = "billing_run"
_FINISHED = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class DurableClient(Protocol):
    """The part of `azure.durable_functions.DurableOrchestrationClient` used here."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any = None
    ) -> str: ...

    async def get_status(self, instance_id: str, show_input: bool = False) -> Any: ...

    async def terminate(self, instance_id: str, reason: str) -> None: ...


class RunRecorder(Protocol):
    """Where started runs are listed (`billing.run_index.RunIndex`)."""

    def record(self, instance_id: str, created: datetime) -> None: ...


def _status_name(status: Any) -> str | None:
    runtime_status = getattr(status, "runtime_status", None)
    return None if runtime_status is None else str(getattr(runtime_status, "value", runtime_status))


async def _existing(client: DurableClient, instance_id: str) -> Any:
    status = await client.get_status(instance_id)
    return status if status and _status_name(status) is not None else None


async def start_run(
    client: DurableClient, run: RunRequest, instance_id: str | None, vault: Vault, index: RunRecorder
) -> str:
    """Start a run; an instance id that was ever used answers 409 `run_exists` (bills no one).

    The run is added to the runs index (`billing.run_index`, what the console lists) before
    it starts, so a started run is always listed; an id is chosen here when none is given.

    "Ever used" includes runs whose history was purged: their vault keys (never deleted)
    still carry the label `azure-durable/{id}`. A new run under the same id would get a
    new key, and idempotency records are scoped per key, so `{id}-{index}` would charge
    again; refusing the id closes that hole.
    """
    if instance_id is not None and (
        await _existing(client, instance_id) is not None
        or await asyncio.to_thread(_labels_used, vault, instance_id)
    ):
        raise SpendgateError(
            "run_exists",
            f"billing run {instance_id} already exists; GET /api/billing/runs/{instance_id}",
            param="instance_id",
        )
    instance_id = instance_id or uuid.uuid4().hex
    await asyncio.to_thread(index.record, instance_id, datetime.now(UTC))
    return await client.start_new(ORCHESTRATOR, instance_id, run.to_dict())


def _labels_used(vault: Vault, instance_id: str) -> bool:
    return any(next(keys_with_label(vault, label), None) for label in run_labels(instance_id))


async def describe_run(client: DurableClient, instance_id: str, vault: Vault | None = None) -> dict[str, Any]:
    """Status, progress (the custom status) and output of a run; 404 if there is none.

    A run that ended without its summary (stopped, where Durable's output is the reason, or
    failed) has no per-item list of its own; with `vault` given, `items` then lists what the
    proxy's audit log recorded for each item of the run's key, so an operator still sees
    who was charged.
    """
    status = await _existing(client, instance_id)
    if status is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    created, updated = status.created_time, status.last_updated_time
    described = {
        "instance_id": instance_id,
        "runtime_status": _status_name(status),
        "created_time": created.isoformat() if created else None,
        "last_updated_time": updated.isoformat() if updated else None,
        "progress": await _progress(client, status.custom_status),
        "output": status.output,
    }
    if vault is not None and not isinstance(status.output, dict) and _status_name(status) in _FINISHED:
        with_input = await client.get_status(instance_id, show_input=True)
        described["items"] = audited_items(vault, instance_id, getattr(with_input, "input_", None))
        described["items_source"] = "audit"
    return described


async def _progress(client: DurableClient, run_status: Any) -> Any:
    """The run's custom status, plus its lanes' progress while they charge (`merge_progress`)."""
    if not isinstance(run_status, dict) or not run_status.get("lanes"):
        return run_status
    lanes = [await client.get_status(str(lane_id)) for lane_id in run_status["lanes"]]
    return merge_progress(run_status, [getattr(lane, "custom_status", None) for lane in lanes])


# What an audit decision means for the item it was made for.
_AUDIT_OUTCOMES = {
    "replayed": ItemOutcome.CHARGED,
    "spend_cap_exceeded": ItemOutcome.CAP_EXCEEDED,
    "vault_key_revoked": ItemOutcome.REVOKED,
    "vault_key_expired": ItemOutcome.EXPIRED,
}


def _audit_outcome(row: dict[str, Any]) -> str:
    decision, upstream = str(row.get("decision") or ""), row.get("upstream_status")
    if decision == "forwarded":
        if isinstance(upstream, int) and 200 <= upstream < 300:
            return str(ItemOutcome.CHARGED)
        return str(ItemOutcome.DECLINED) if upstream == 402 else str(ItemOutcome.INVALID)
    outcome = _AUDIT_OUTCOMES.get(decision)
    return str(outcome) if outcome is not None else decision


def audited_items(vault: Vault, instance_id: str, run_input: Any = None) -> list[dict[str, Any]]:
    """Per-item outcomes of a run from the audit rows of its charge keys (latest row per item).

    Items are recognised by their idempotency key `{instanceId}-{itemIndex}`; customer ids
    come from the run's input when it listed the customers.
    """
    customers: list[Any] = []
    if isinstance(run_input, dict) and isinstance(run_input.get("customers"), list):
        customers = run_input["customers"]
    prefix, latest = f"{instance_id}-", {}
    for key in keys_with_label(vault, charge_label(instance_id)):
        continuation: str | None = None
        while True:
            page = vault.audit(key["key_id"], limit=1000, continuation=continuation)
            for row in page.get("data", []):  # newest first: the first row seen per item wins
                idem = str(row.get("idempotency_key") or "")
                index = idem[len(prefix):]
                if idem.startswith(prefix) and index.isdigit() and int(index) not in latest:
                    latest[int(index)] = row
            continuation = page.get("continuation")
            if not continuation:
                break
    items = []
    for index, row in sorted(latest.items()):
        customer = customers[index] if index < len(customers) and isinstance(customers[index], dict) else {}
        items.append({
            "item_index": index,
            "customer_id": customer.get("customer_id"),
            "amount_cents": row.get("amount"),
            "outcome": _audit_outcome(row),
            "object_id": row.get("stripe_object_id"),
            "code": None if row.get("decision") in ("forwarded", "replayed") else row.get("decision"),
            "audited_at": row.get("time"),
        })
    return items


async def stop_run(client: DurableClient, vault: Vault, instance_id: str) -> dict[str, Any]:
    """Revoke the run's keys first (charging stops at once), then terminate the orchestration."""
    status = await _existing(client, instance_id)
    if status is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    revoked = revoke_run_keys(vault, run_labels(instance_id))
    terminated = False
    if _status_name(status) not in _FINISHED:
        await client.terminate(instance_id, "stopped through POST /api/billing/runs/{id}/stop")
        terminated = True
    return {"instance_id": instance_id, "revoked_key_ids": revoked, "terminated": terminated}


async def run_spend(client: DurableClient, vault: Vault, instance_id: str) -> dict[str, Any]:
    """The run's spend according to the proxy's audit log (label `azure-durable/{id}`)."""
    if await _existing(client, instance_id) is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    return {"instance_id": instance_id, **vault.spend(charge_label(instance_id))}
