"""What the billing run routes do, as plain async functions over a Durable client and the vault.

The triggers in `orchestrators/routes.py` only parse and shape responses; these take their
dependencies (`DurableOrchestrationClient`, `VaultService`) as arguments.
"""

from __future__ import annotations

from typing import Any, Protocol

from billing.keys import Vault, revoke_run_keys
from billing.payloads import RunRequest
from billing.plan import charge_label, run_labels
from core.errors import SpendgateError

ORCHESTRATOR = "billing_run"
_FINISHED = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class DurableClient(Protocol):
    """The part of `azure.durable_functions.DurableOrchestrationClient` used here."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any = None
    ) -> str: ...

    async def get_status(self, instance_id: str) -> Any: ...

    async def terminate(self, instance_id: str, reason: str) -> None: ...


def _status_name(status: Any) -> str | None:
    runtime_status = getattr(status, "runtime_status", None)
    return None if runtime_status is None else str(getattr(runtime_status, "value", runtime_status))


async def _existing(client: DurableClient, instance_id: str) -> Any:
    status = await client.get_status(instance_id)
    return status if status and _status_name(status) is not None else None


async def start_run(client: DurableClient, run: RunRequest, instance_id: str | None) -> str:
    """Start a run; an instance id that already exists answers 409 `run_exists` (bills no one)."""
    if instance_id is not None and await _existing(client, instance_id) is not None:
        raise SpendgateError(
            "run_exists",
            f"billing run {instance_id} already exists; GET /api/billing/runs/{instance_id}",
            param="instance_id",
        )
    return await client.start_new(ORCHESTRATOR, instance_id, run.to_dict())


async def describe_run(client: DurableClient, instance_id: str) -> dict[str, Any]:
    """Status, progress (the custom status) and output of a run; 404 if there is none."""
    status = await _existing(client, instance_id)
    if status is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    created, updated = status.created_time, status.last_updated_time
    return {
        "instance_id": instance_id,
        "runtime_status": _status_name(status),
        "created_time": created.isoformat() if created else None,
        "last_updated_time": updated.isoformat() if updated else None,
        "progress": status.custom_status,
        "output": status.output,
    }


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
