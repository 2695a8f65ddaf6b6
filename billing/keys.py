"""Issuing and revoking a billing run's vault keys, idempotently per label.

Replays never re-run an activity whose result is in history, so the orchestrator cannot
mint a second key. What remains is the activity being retried after it crashed between
minting the key and reporting it: the first key then exists but the run never learned
its id. `issue_run_key` therefore revokes every still-active key under the run's label
before minting, and caps the new key at the budget minus whatever keys
under the label already spent or hold pending, so a run's keys together never exceed its
budget and at most one of them is active.

(If the host ever delivered a *successful* issue activity twice, the second execution
would revoke the key the run is using: the run then stops with `revoked`. That fails
closed; it can never spend more.)

A stop leaves no key, whatever the timing. `POST …/stop` first marks the run's labels as
stopped (`billing.table.StopMarks`), then revokes every key under them. `issue_run_key`
mints, then looks at the mark, and revokes the key it just minted if the label is
stopped, handing out no key id (`stopped: true`). Either the mark was there when the issue
looked (the issue revokes its own key), or it was written after that look, so after the
key was stored, and the stop's listing, which follows its mark, finds and revokes the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from billing.payloads import KeyIssued, KeyRequest


class Vault(Protocol):
    """The part of `proxy.vault.VaultService` used here."""

    def issue_in_app(self, request: Mapping[str, Any]) -> dict[str, Any]: ...

    def revoke(self, key_id: str) -> dict[str, Any]: ...

    def list(self, label: str | None = None, limit: int = 100, continuation: str | None = None) -> dict[str, Any]: ...

    def spend(self, label: str) -> dict[str, Any]: ...

    def audit(self, key_id: str, limit: int = 50, continuation: str | None = None) -> dict[str, Any]: ...


class Marks(Protocol):
    """The part of `billing.table.StopMarks` used here."""

    def is_stopped(self, label: str) -> bool: ...


def usd(cents: int) -> str:
    """Cents as the vault's dollar string: 290000 → "2900.00"."""
    return f"{cents // 100}.{cents % 100:02d}"


def keys_with_label(vault: Vault, label: str) -> Iterator[dict[str, Any]]:
    """Every key under `label`, across pages."""
    continuation: str | None = None
    while True:
        page = vault.list(label=label, limit=100, continuation=continuation)
        yield from (k for k in page.get("data", []) if k.get("label") == label)
        continuation = page.get("continuation")
        if not continuation:
            return


def issue_run_key(vault: Vault, request: KeyRequest, marks: Marks) -> KeyIssued:
    """Mint the run's key for one role; safe to call again after a crash, and after a stop (module doc)."""
    superseded = [k["key_id"] for k in keys_with_label(vault, request.label) if k.get("status") == "active"]
    for key_id in superseded:
        vault.revoke(key_id)
    if marks.is_stopped(request.label):
        return KeyIssued(None, request.label, 0, superseded=tuple(superseded), stopped=True)
    cap = request.cap_cents
    if superseded:
        used = vault.spend(request.label)
        cap -= int(used.get("spent_cents", 0)) + int(used.get("pending_cents", 0))
    if cap <= 0:
        return KeyIssued(None, request.label, 0, superseded=tuple(superseded))
    body = vault.issue_in_app(
        {
            "vendor": "stripe",
            "label": request.label,
            "daily_usd_cap": usd(cap),
            "total_usd_cap": usd(cap),
            "allowed_endpoints": list(request.allowed_endpoints),
            "expires_in": request.expires_in,
            "metadata": {**request.metadata, "role": request.role},
        }
    )
    if marks.is_stopped(request.label):  # stopped while minting: the key never leaves this function active
        vault.revoke(body["key_id"])
        return KeyIssued(None, request.label, 0, superseded=(*superseded, body["key_id"]), stopped=True)
    return KeyIssued(
        key_id=body["key_id"],
        label=request.label,
        cap_cents=cap,
        expires_at=body.get("expires_at"),
        superseded=tuple(superseded),
    )


def revoke_run_keys(
    vault: Vault, labels: Iterable[str], on_revoked: Callable[[str, str], None] | None = None,
    before_revoke: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Revoke every active key under the labels; returns the ids revoked now (idempotent).

    `on_revoked(key_id, label)` follows each revoke (the stop route's alert), `before_revoke`
    precedes it (the alert staged)."""
    revoked: list[str] = []
    for label in labels:
        for key in list(keys_with_label(vault, label)):
            if key.get("status") == "active":
                if before_revoke is not None:
                    before_revoke(key["key_id"], label)
                vault.revoke(key["key_id"])
                revoked.append(key["key_id"])
                if on_revoked is not None:
                    on_revoked(key["key_id"], label)
    return revoked
