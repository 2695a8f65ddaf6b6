"""The payloads that cross the Durable boundary in a billing run, in one stable module.

Orchestrator input, activity inputs and outputs and sub-orchestration results are
stored in orchestration history as JSON, so they travel as plain dicts (`to_dict` /
`from_dict`) rather than pickled or class-tagged objects: a run already in flight keeps
working when code around these classes changes, as long as the field names here stay.
Add fields with defaults; never rename or remove one.

Vault keys appear in `KeyIssued`, `FetchRequest`, `BatchRequest` and `ChargeRequest`
(they must reach the activities, so they sit in history; they are short-lived and
revoked at the end of the run). The Stripe secret never appears in any of them, and
custom status and run output carry key ids only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ItemOutcome(StrEnum):
    """What happened to one customer of a billing run."""

    CHARGED = "charged"
    DECLINED = "declined"  # the card was refused; terminal for this customer only
    CAP_EXCEEDED = "cap_exceeded"  # the run's key is out of budget; the run stops
    REVOKED = "revoked"  # the run's key was revoked; the run stops
    EXPIRED = "expired"  # the run's key expired; the run stops
    INVALID = "invalid"  # the request was refused as invalid (bad customer, no card, forbidden)
    TRANSIENT_EXHAUSTED = "transient_exhausted"  # still failing after every retry; not confirmed
    SKIPPED = "skipped"  # never attempted because the run had stopped (see `reason`)
    ALREADY_CHARGED = "already_charged"  # the charge identity was already charged (object_id: that intent)


# Outcomes that mean the key cannot charge anyone any more: schedule no further batches.
STOPPING_OUTCOMES: frozenset[ItemOutcome] = frozenset(
    {ItemOutcome.CAP_EXCEEDED, ItemOutcome.REVOKED, ItemOutcome.EXPIRED}
)


class Endpoint(StrEnum):
    """The Stripe endpoint a run charges through (the charge key's only allowed endpoint)."""

    PAYMENT_INTENTS = "payment_intents"
    CHARGES = "charges"


@dataclass(frozen=True)
class ChargeItem:
    """One customer to bill: who, how much, and (for payment intents) which card.

    `card_source` says how the card was chosen (`billing.cards.CardSource`); without a card,
    `card_code` and `card_reason` say why (`no_payment_method`, `customer_deleted`,
    `no_such_customer`). `purpose` is the optional third part of the charge identity
    (customer, billing period, purpose): a deliberate second charge in one period needs one.
    `currency` is the customer's own currency as Stripe reported it (for the warnings).
    """

    customer_id: str
    amount_cents: int
    payment_method: str | None = None
    purpose: str | None = None
    card_source: str | None = None
    card_code: str | None = None
    card_reason: str | None = None
    currency: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChargeItem:
        return cls(
            str(data["customer_id"]),
            int(data["amount_cents"]),
            data.get("payment_method"),
            data.get("purpose"),
            data.get("card_source"),
            data.get("card_code"),
            data.get("card_reason"),
            data.get("currency"),
        )


@dataclass(frozen=True)
class CustomerQuery:
    """Select customers from Stripe by metadata, charging each the same amount."""

    metadata: dict[str, str]
    amount_cents: int

    def to_dict(self) -> dict[str, Any]:
        return {"metadata": dict(self.metadata), "amount_cents": self.amount_cents}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerQuery:
        return cls({str(k): str(v) for k, v in data["metadata"].items()}, int(data["amount_cents"]))

    def matches(self, customer: Mapping[str, Any]) -> bool:
        """Does a Stripe customer object carry every metadata pair of the query?"""
        metadata = customer.get("metadata") or {}
        return all(metadata.get(k) == v for k, v in self.metadata.items())


@dataclass(frozen=True)
class RunRequest:
    """A validated `POST /api/billing/runs` body: the billing run orchestrator's input."""

    billing_period: str
    budget_cents: int
    max_parallel: int = 50
    expires_in: str = "2h"
    endpoint: Endpoint = Endpoint.PAYMENT_INTENTS
    customers: tuple[ChargeItem, ...] | None = None
    customer_query: CustomerQuery | None = None
    purpose: str | None = None  # the charge identity's purpose for every item that names none
    # Approval (docs/approvals.md): the body's explicit ask and shorter window, and, once the start
    # route decided the run waits, until when (ISO 8601, UTC). None: the run charges at once.
    require_approval: bool = False
    approval_timeout: str | None = None
    approval_expires_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "require_approval": self.require_approval,
            "approval_timeout": self.approval_timeout,
            "approval_expires_at": self.approval_expires_at,
            "purpose": self.purpose,
            "billing_period": self.billing_period,
            "budget_cents": self.budget_cents,
            "max_parallel": self.max_parallel,
            "expires_in": self.expires_in,
            "endpoint": str(self.endpoint),
            "customers": None if self.customers is None else [c.to_dict() for c in self.customers],
            "customer_query": None if self.customer_query is None else self.customer_query.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRequest:
        customers = data.get("customers")
        query = data.get("customer_query")
        return cls(
            billing_period=str(data["billing_period"]),
            budget_cents=int(data["budget_cents"]),
            max_parallel=int(data.get("max_parallel", 50)),
            expires_in=str(data.get("expires_in", "2h")),
            endpoint=Endpoint(data.get("endpoint", Endpoint.PAYMENT_INTENTS)),
            customers=None if customers is None else tuple(ChargeItem.from_dict(c) for c in customers),
            customer_query=None if query is None else CustomerQuery.from_dict(query),
            purpose=data.get("purpose"),
            require_approval=bool(data.get("require_approval", False)),
            approval_timeout=data.get("approval_timeout"),
            approval_expires_at=data.get("approval_expires_at"),
        )


@dataclass(frozen=True)
class ApprovalDecision:
    """The `approval` external event of a billing run, and the `close_run_approval` activity's result.

    `decision` is `approved`, `rejected`, `stopped` or `approval_timeout`; `by` who decided (the Easy
    Auth principal, else the caller's `approver`); `at` when (ISO 8601)."""

    decision: str
    by: str | None = None
    reason: str | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApprovalDecision:
        return cls(str(data["decision"]), data.get("by"), data.get("reason"), data.get("at"))


@dataclass(frozen=True)
class KeyRequest:
    """Input of the `issue_run_key` activity: one vault key for one role of a run."""

    label: str
    role: str  # "charge" or "customers"
    cap_cents: int
    allowed_endpoints: tuple[str, ...]
    expires_in: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "allowed_endpoints": list(self.allowed_endpoints)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyRequest:
        return cls(
            label=str(data["label"]),
            role=str(data["role"]),
            cap_cents=int(data["cap_cents"]),
            allowed_endpoints=tuple(data["allowed_endpoints"]),
            expires_in=str(data["expires_in"]),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(frozen=True)
class KeyIssued:
    """Output of `issue_run_key`. `key_id` is None when the run's budget is already used up.

    It holds no secret: this lands in orchestration history, so activities re-derive the
    key from its id in-process (`VaultService.in_app_vault_key`).
    """

    key_id: str | None
    label: str
    cap_cents: int
    expires_at: str | None = None
    superseded: tuple[str, ...] = ()  # ids of orphan keys (from a crashed attempt) revoked first
    stopped: bool = False  # the run's label was stopped: no key (or one born revoked)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "superseded": list(self.superseded)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyIssued:
        return cls(
            key_id=data.get("key_id"),
            label=str(data["label"]),
            cap_cents=int(data["cap_cents"]),
            expires_at=data.get("expires_at"),
            superseded=tuple(data.get("superseded") or ()),
            stopped=bool(data.get("stopped", False)),
        )


@dataclass(frozen=True)
class FetchRequest:
    """Input of `fetch_customers`: select by query, or look up cards for given customers."""

    key_id: str  # the read-only key; the secret is re-derived in the activity
    query: CustomerQuery | None = None
    items: tuple[ChargeItem, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "query": None if self.query is None else self.query.to_dict(),
            "items": None if self.items is None else [i.to_dict() for i in self.items],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FetchRequest:
        query, items = data.get("query"), data.get("items")
        return cls(
            key_id=str(data["key_id"]),
            query=None if query is None else CustomerQuery.from_dict(query),
            items=None if items is None else tuple(ChargeItem.from_dict(i) for i in items),
        )


@dataclass(frozen=True)
class FetchResult:
    """Output of `fetch_customers`: the items to bill, or the terminal code that stopped the fetch."""

    items: tuple[ChargeItem, ...]
    failure_code: str | None = None
    pages: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "failure_code": self.failure_code, "pages": self.pages}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FetchResult:
        return cls(
            tuple(ChargeItem.from_dict(i) for i in data["items"]), data.get("failure_code"), int(data.get("pages", 0))
        )


@dataclass(frozen=True)
class ChargeRequest:
    """Input of `charge_customer`: one customer, the run's key and its stable position."""

    item: ChargeItem
    item_index: int
    orchestration_id: str
    key_id: str  # the run's charge key; the secret is re-derived in the activity
    endpoint: Endpoint
    billing_period: str

    @property
    def idempotency_key(self) -> str:
        """`{instanceId}-{itemIndex}`: the same for every retry and replay of this item."""
        return f"{self.orchestration_id}-{self.item_index}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item.to_dict(),
            "item_index": self.item_index,
            "orchestration_id": self.orchestration_id,
            "key_id": self.key_id,
            "endpoint": str(self.endpoint),
            "billing_period": self.billing_period,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChargeRequest:
        return cls(
            item=ChargeItem.from_dict(data["item"]),
            item_index=int(data["item_index"]),
            orchestration_id=str(data["orchestration_id"]),
            key_id=str(data["key_id"]),
            endpoint=Endpoint(data["endpoint"]),
            billing_period=str(data["billing_period"]),
        )


@dataclass(frozen=True)
class BatchRequest:
    """Input of the `billing_batch` sub-orchestration: consecutive items from `first_index`."""

    orchestration_id: str
    key_id: str
    endpoint: Endpoint
    billing_period: str
    first_index: int
    items: tuple[ChargeItem, ...]

    def charges(self) -> list[ChargeRequest]:
        return [
            ChargeRequest(
                item, self.first_index + n, self.orchestration_id, self.key_id, self.endpoint, self.billing_period
            )
            for n, item in enumerate(self.items)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "orchestration_id": self.orchestration_id,
            "key_id": self.key_id,
            "endpoint": str(self.endpoint),
            "billing_period": self.billing_period,
            "first_index": self.first_index,
            "items": [i.to_dict() for i in self.items],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRequest:
        return cls(
            orchestration_id=str(data["orchestration_id"]),
            key_id=str(data["key_id"]),
            endpoint=Endpoint(data["endpoint"]),
            billing_period=str(data["billing_period"]),
            first_index=int(data["first_index"]),
            items=tuple(ChargeItem.from_dict(i) for i in data["items"]),
        )


@dataclass(frozen=True)
class ItemResult:
    """Output of `charge_customer` (and the run's per-item record)."""

    item_index: int
    customer_id: str
    amount_cents: int
    outcome: ItemOutcome
    object_id: str | None = None
    code: str | None = None
    reason: str | None = None  # for skipped items: the outcome that stopped the run; else a message
    replayed: bool = False
    card_source: str | None = None  # how the card was chosen (`billing.cards.CardSource`)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": str(self.outcome)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemResult:
        return cls(
            item_index=int(data["item_index"]),
            customer_id=str(data["customer_id"]),
            amount_cents=int(data["amount_cents"]),
            outcome=ItemOutcome(data["outcome"]),
            object_id=data.get("object_id"),
            code=data.get("code"),
            reason=data.get("reason"),
            replayed=bool(data.get("replayed", False)),
            card_source=data.get("card_source"),
        )


@dataclass(frozen=True)
class RevokeRequest:
    """Input of `revoke_run_keys`: every key under these labels is revoked.

    `instance_id` and `stopped` (the run's stop reason) let the activity alert on a run its cap
    stopped (docs/approvals.md, "Alerts")."""

    labels: tuple[str, ...]
    instance_id: str | None = None
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "instance_id": self.instance_id, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RevokeRequest:
        return cls(tuple(str(label) for label in data["labels"]), data.get("instance_id"), data.get("stopped"))


@dataclass(frozen=True)
class ApprovalClose:
    """Input of `close_run_approval`: the run whose approval window ended (its timer fired)."""

    instance_id: str
    expires_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApprovalClose:
        return cls(str(data["instance_id"]), str(data["expires_at"]))
