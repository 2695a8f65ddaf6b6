"""What the billing run routes do, as plain async functions over a Durable client and the vault.

The triggers in `orchestrators/routes.py` only parse and shape responses; these take their
dependencies (`DurableOrchestrationClient`, `VaultService`) as arguments. They run on the
worker's one event loop, so every blocking Table Storage call goes through
`asyncio.to_thread` (a blocking call there would stall every invocation of the instance).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from billing.keys import Vault, keys_with_label, revoke_run_keys
from billing.payloads import ApprovalDecision, ChargeItem, FetchResult, ItemOutcome, ItemResult, RunRequest
from billing.plan import charge_label, merge_progress, progress, run_labels
from core.errors import SpendgateError

ORCHESTRATOR = "billing_run"
_FINISHED = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class DurableClient(Protocol):
    """The part of `azure.durable_functions.DurableOrchestrationClient` used here."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any = None
    ) -> str: ...

    async def get_status(
        self, instance_id: str, show_history: bool = False, show_history_output: bool = False,
        show_input: bool = False,
    ) -> Any: ...

    async def terminate(self, instance_id: str, reason: str) -> None: ...


class RunRecorder(Protocol):
    """Where started runs are listed (`billing.run_index.RunIndex`)."""

    def record(self, instance_id: str, created: datetime) -> None: ...


class Marks(Protocol):
    """The part of `billing.table.StopMarks` used here."""

    def mark(self, label: str, now: datetime) -> None: ...

    def is_stopped(self, label: str) -> bool: ...


def _status_name(status: Any) -> str | None:
    runtime_status = getattr(status, "runtime_status", None)
    return None if runtime_status is None else str(getattr(runtime_status, "value", runtime_status))


async def _existing(client: DurableClient, instance_id: str) -> Any:
    status = await client.get_status(instance_id)
    return status if status and _status_name(status) is not None else None


async def start_run(
    client: DurableClient, run: RunRequest, instance_id: str | None, vault: Vault, marks: Marks, index: RunRecorder,
    before_start: Callable[[str], None] | None = None,
) -> str:
    """Start a run; an instance id that was ever used answers 409 `run_exists` (bills no one).

    "Ever used" includes runs whose history was purged: their vault keys (never deleted)
    still carry the label `azure-durable/{id}`. A new run under the same id would get a
    new key, and idempotency records are scoped per key, so `{id}-{index}` would charge
    again; refusing the id closes that hole. A stopped id stays stopped, too.

    The run is added to the runs index (`billing.run_index`, what the console lists) before
    it starts, so a started run is always listed; an id is chosen here when none is given.
    """
    if instance_id is not None and (
        await _existing(client, instance_id) is not None
        or await asyncio.to_thread(_id_used, vault, marks, instance_id)
    ):
        raise SpendgateError(
            "run_exists",
            f"billing run {instance_id} already exists; GET /api/billing/runs/{instance_id}",
            param="instance_id",
        )
    instance_id = instance_id or uuid.uuid4().hex
    await asyncio.to_thread(index.record, instance_id, datetime.now(UTC))
    if before_start is not None:  # the alert staged (alerts/outbox.py), once the id is known to be new
        await asyncio.to_thread(before_start, instance_id)
    return await client.start_new(ORCHESTRATOR, instance_id, run.to_dict())


def _id_used(vault: Vault, marks: Marks, instance_id: str) -> bool:
    labels = run_labels(instance_id)
    return any(next(keys_with_label(vault, label), None) for label in labels) or any(
        marks.is_stopped(label) for label in labels
    )


# (key id, idempotency key) -> the payment intent a declined request's stored answer names
DeclineLookup = Callable[[str, str], str | None]


async def describe_run(
    client: DurableClient, instance_id: str, vault: Vault | None = None, declines: DeclineLookup | None = None
) -> dict[str, Any]:
    """Status, progress (the custom status) and output of a run; 404 if there is none.

    A run that ended without its summary (stopped, where Durable's output is the reason, or
    failed) still accounts for every customer (`accounted_items`): the list to bill comes
    from history (the input, or the `fetch_customers` result), the outcomes of finished
    batches from its lanes' histories, the batch cut off by the stop from the proxy's audit log, and
    every customer never attempted is `skipped: stopped`. Its `progress` is recounted from
    those items, so it matches Stripe rather than the last custom status. `declines` finds
    the payment intent of an audited decline (the audit row holds no object for a 402).
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
        full = await client.get_status(instance_id, show_history=True, show_history_output=True, show_input=True)
        reason = "stopped" if _status_name(status) == "Terminated" else str(_status_name(status)).lower()
        # The status API names the list `historyEvents`; the SDK keeps unknown fields as attributes.
        history = list(_history(full))
        custom = status.custom_status if isinstance(status.custom_status, Mapping) else {}
        lane_ids = [*(custom.get("settled_lanes") or ()), *(custom.get("lanes") or ())]
        for lane_id in lane_ids:  # batches ran in the lanes' own histories (a recheck's last)
            lane = await client.get_status(str(lane_id), show_history=True, show_history_output=True)
            history += _history(lane)
        items = await asyncio.to_thread(
            accounted_items, vault, instance_id, getattr(full, "input_", None), history, reason, declines
        )
        described["items"] = [i.to_dict() for i in items]
        described["items_source"] = "history+audit"
        described["progress"] = {
            **progress(len(items), items, int(custom.get("cap_cents") or 0), reason, custom.get("warnings") or ()),
            "source": "history+audit",
        }
    return described


def _history(status: Any) -> list[Any]:
    return list(getattr(status, "history", None) or getattr(status, "historyEvents", None) or [])


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


def _audit_outcome(row: Mapping[str, Any]) -> ItemOutcome:
    decision, upstream = str(row.get("decision") or ""), row.get("upstream_status")
    if decision == "forwarded":
        if isinstance(upstream, int) and 200 <= upstream < 300:
            return ItemOutcome.CHARGED
        return ItemOutcome.DECLINED if upstream == 402 else ItemOutcome.INVALID
    return _AUDIT_OUTCOMES.get(decision, ItemOutcome.INVALID)


def _json(value: Any) -> Any:
    """A history value: the status API gives results as JSON values (or JSON text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def run_items(run_input: Any, history: Sequence[Any] | None) -> list[ChargeItem]:
    """The run's list to bill, as fixed in history: its input, or the customers it fetched."""
    run_input = _json(run_input)
    fetched: list[ChargeItem] | None = None
    for event in history or ():
        if isinstance(event, Mapping) and event.get("FunctionName") == "fetch_customers" and "Result" in event:
            result = _json(event["Result"])
            if isinstance(result, Mapping) and isinstance(result.get("items"), list):
                fetched = list(FetchResult.from_dict(result).items)
    if fetched is not None:
        return fetched
    if isinstance(run_input, Mapping) and isinstance(run_input.get("customers"), list):
        return list(RunRequest.from_dict(run_input).customers or ())
    return []


def _batch_results(history: Sequence[Any] | None) -> dict[int, ItemResult]:
    """Each item's latest batch result: a later event wins (a recheck lane's history comes last)."""
    done: dict[int, ItemResult] = {}
    for event in history or ():
        if not isinstance(event, Mapping) or event.get("FunctionName") != "billing_batch":
            continue
        result = _json(event.get("Result"))
        if isinstance(result, list):
            for raw in result:
                if isinstance(raw, Mapping):
                    item = ItemResult.from_dict(raw)
                    done[item.item_index] = item
    return done


def _audited(vault: Vault, instance_id: str) -> dict[int, Mapping[str, Any]]:
    """The latest audit row per item index of the run's charge keys."""
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
    return latest


def accounted_items(
    vault: Vault,
    instance_id: str,
    run_input: Any = None,
    history: Sequence[Any] | None = None,
    reason: str = "stopped",
    declines: DeclineLookup | None = None,
) -> list[ItemResult]:
    """One result per customer of a run that ended without its summary (see `describe_run`)."""
    items = run_items(run_input, history)
    finished = _batch_results(history)
    audited = _audited(vault, instance_id)
    results: list[ItemResult] = []
    for index in range(max(len(items), max(audited, default=-1) + 1)):
        item = items[index] if index < len(items) else None
        customer = item.customer_id if item else ""
        amount = item.amount_cents if item else 0
        if index in finished:
            results.append(finished[index])
        elif index in audited:
            row = audited[index]
            outcome = _audit_outcome(row)
            decision = row.get("decision")
            object_id = row.get("stripe_object_id")
            if outcome is ItemOutcome.DECLINED and not object_id and declines is not None:
                object_id = declines(str(row.get("key_id") or ""), str(row.get("idempotency_key") or ""))
            results.append(ItemResult(
                index, customer, int(row.get("amount") or amount), outcome,
                object_id=object_id,
                code=None if decision in ("forwarded", "replayed") else decision,
                reason=f"from the audit log ({row.get('time')})",
            ))
        else:
            results.append(ItemResult(index, customer, amount, ItemOutcome.SKIPPED, reason=reason))
    return results


class Decisions(Protocol):
    """The part of `billing.table.RunDecisions` used here."""

    def decide(self, instance_id: str, decision: ApprovalDecision) -> tuple[bool, ApprovalDecision]: ...


async def stop_run(
    client: DurableClient, vault: Vault, instance_id: str, marks: Marks, now: datetime,
    decisions: Decisions | None = None, on_revoked: Callable[[str, str], None] | None = None,
    before_revoke: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Mark the run's labels stopped, revoke their keys (charging stops at once), then terminate.

    The mark comes first: a key the run is minting right now is revoked by the issue itself
    or found by the revoke below (`billing.keys`), so no key of the run stays active. A run
    still waiting for approval also gets `stopped` as its one decision (`billing.run_approval`),
    so a later approve answers 409; an approval written just before still issues no key that
    survives: the issue honours the marks.
    """
    status = await _existing(client, instance_id)
    if status is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    revoked = await asyncio.to_thread(_mark_and_revoke, vault, marks, instance_id, now, on_revoked, before_revoke)
    if decisions is not None:
        stopped = ApprovalDecision("stopped", at=now.astimezone(UTC).isoformat(), reason="the run was stopped")
        await asyncio.to_thread(decisions.decide, instance_id, stopped)
    terminated = False
    if _status_name(status) not in _FINISHED:
        await client.terminate(instance_id, "stopped through POST /api/billing/runs/{id}/stop")
        terminated = True
    return {"instance_id": instance_id, "revoked_key_ids": revoked, "terminated": terminated}


def _mark_and_revoke(
    vault: Vault, marks: Marks, instance_id: str, now: datetime, on_revoked: Callable[[str, str], None] | None = None,
    before_revoke: Callable[[str, str], None] | None = None,
) -> list[str]:
    for label in run_labels(instance_id):
        marks.mark(label, now)
    return revoke_run_keys(vault, run_labels(instance_id), on_revoked, before_revoke)


async def run_spend(client: DurableClient, vault: Vault, instance_id: str) -> dict[str, Any]:
    """The run's spend according to the proxy's audit log (label `azure-durable/{id}`)."""
    if await _existing(client, instance_id) is None:
        raise SpendgateError("not_found", f"no billing run {instance_id}")
    spend = await asyncio.to_thread(vault.spend, charge_label(instance_id))
    return {"instance_id": instance_id, **spend}
