"""What the model reads about charges that wait for a person (issue 16): the one place for that wording.

A billing key with `approval_above_usd` holds a charge above it: the proxy answers 402
`approval_required` with an approval id (docs/approvals.md). The tool tells the model to wait
and not to retry; `get_charge_status("apr_…")` reports the approval's state. Once a person
approved it, the *same* call (same arguments, hence the same idempotency key) goes through once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

APPROVAL_ID = re.compile(r"^apr_[0-9a-f]{32}$")
CODES = ("approval_required", "approval_rejected", "approval_expired")

_STATE_TEXT = {
    "pending": "waiting for approval {id}; do not retry until approved. Tell the user a person has to approve "
    "this charge; nothing was charged yet.",
    "approved": "approval {id} was approved. Call charge_stripe again with exactly the same arguments to charge "
    "the customer once; nothing was charged yet.",
    "rejected": "approval {id} was rejected{by}. Nothing was charged. Do not charge this customer again for this; "
    "tell the user.",
    "expired": "approval {id} expired without a decision. Nothing was charged. Do not retry; tell the user a person "
    "has to approve it (a new request needs a new invoice_id).",
}


def _text(state: str, approval_id: str, decided_by: str | None = None) -> str:
    return _STATE_TEXT[state].format(id=approval_id, by=f" by {decided_by}" if decided_by else "")


def charge_held(code: str, body: Mapping[str, Any], idempotency_key: str) -> str:
    """The tool output for a 402 `approval_*` answer to charge_stripe."""
    approval_id = str((body.get("error") or {}).get("approval") or "")
    state = {"approval_required": "pending", "approval_rejected": "rejected", "approval_expired": "expired"}[code]
    return json.dumps({"error": code, "message": _text(state, approval_id), "retryable": False, "stop": False,
                       "approval_id": approval_id, "approval_state": state, "idempotency_key": idempotency_key})


def status(view: Mapping[str, Any]) -> dict[str, Any]:
    """get_charge_status's answer for an approval (`GET /api/billing/approvals/{id}` with the billing key)."""
    state = str(view.get("state"))
    return {"approval_id": view.get("id"), "approval_state": state, "amount_cents": view.get("amount_cents"),
            "customer_id": view.get("customer"), "expires_at": view.get("expires_at"),
            "decided_by": view.get("decided_by"),
            "message": _text(state, str(view.get("id")), view.get("decided_by")) if state in _STATE_TEXT else state}
