"""Demo data for the local Stripe (localstripe): customers that can really be charged.

Customers come in the two shapes real Stripe accounts hold (shared BRIEF):

- **modern** (the default): a card PaymentMethod attached to the customer and set as its
  `invoice_settings.default_payment_method`, no `source`;
- **legacy**: a card token as the customer's `source` (its `default_source`); localstripe
  has no magic `tok_visa`, so a token is made first.

Customers carry `metadata[plan]` so billing runs can select them with a customer_query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

GOOD_CARD = "4242424242424242"
DECLINING_CARD = "4000000000000341"  # attaches fine, declined when charged


MODERN = "modern"
LEGACY = "legacy"
_CARD_FIELDS = ("card[number]", "card[exp_month]", "card[exp_year]", "card[cvc]")


def card_payment_method(client: httpx.Client, card: str = GOOD_CARD) -> str:
    """A card PaymentMethod (not yet attached to anyone); returns its id."""
    resp = client.post("/v1/payment_methods", data={"type": "card", **dict(zip(_CARD_FIELDS, (card, "12", "2030", "123"),
                                                                                  strict=True))})
    resp.raise_for_status()
    return str(resp.json()["id"])


def create_customer(
    client: httpx.Client,
    *,
    name: str,
    plan: str = "pro",
    card: str = GOOD_CARD,
    extra_metadata: dict[str, str] | None = None,
    shape: str = MODERN,
) -> str:
    """Create one customer with a card, modern (default payment method) or legacy (source); returns its id."""
    data = {"name": name, "metadata[plan]": plan}
    if shape == MODERN:
        pm = card_payment_method(client, card)
        data.update({"payment_method": pm, "invoice_settings[default_payment_method]": pm})
    else:
        token = client.post("/v1/tokens", data=dict(zip(_CARD_FIELDS, (card, "12", "2030", "123"), strict=True)))
        token.raise_for_status()
        data["source"] = token.json()["id"]
    for k, v in (extra_metadata or {}).items():
        data[f"metadata[{k}]"] = v
    resp = client.post("/v1/customers", data=data)
    resp.raise_for_status()
    return str(resp.json()["id"])


def seed_customers(
    base_url: str,
    secret_key: str,
    count: int = 5,
    *,
    plan: str = "pro",
    prefix: str = "Demo customer",
    extra_metadata: dict[str, str] | None = None,
    start: int = 1,
    shape: str = MODERN,
) -> list[str]:
    """Create `count` chargeable customers on `plan` (numbered from `start`); returns their ids."""
    with httpx.Client(base_url=base_url, auth=(secret_key, ""), timeout=30) as client:
        return [
            create_customer(client, name=f"{prefix} {start + i}", plan=plan, extra_metadata=extra_metadata, shape=shape)
            for i in range(count)
        ]


def iter_objects(
    base_url: str, secret_key: str, resource: str, *, client: httpx.Client | None = None
) -> Iterator[dict[str, Any]]:
    """Every object of `resource` (e.g. "payment_intents") the Stripe at base_url holds, a page at a time.

    Pass `client` to reuse a connection pool whose base URL and auth are already set."""
    own = client is None
    http = client or httpx.Client(base_url=base_url, auth=(secret_key, ""), timeout=60)
    try:
        after = None
        while True:
            params: dict[str, str | int] = {"limit": 100, **({"starting_after": after} if after else {})}
            page = http.get(f"/v1/{resource}", params=params).raise_for_status().json()
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["data"][-1]["id"]
    finally:
        if own:
            http.close()


def find_customers(base_url: str, secret_key: str, metadata: dict[str, str]) -> list[dict[str, Any]]:
    """Customers whose metadata includes all of `metadata` (filtered client-side: localstripe has no search)."""
    return [
        c for c in iter_objects(base_url, secret_key, "customers")
        if all((c.get("metadata") or {}).get(k) == v for k, v in metadata.items())
    ]


def count_objects(base_url: str, secret_key: str, resource: str = "payment_intents") -> int:
    """How many objects of `resource` the Stripe at base_url holds.

    localstripe answers lists with `total_count`, so one small request does; elsewhere this
    pages through everything."""
    with httpx.Client(base_url=base_url, auth=(secret_key, ""), timeout=30) as client:
        first = client.get(f"/v1/{resource}", params={"limit": 1}).json()
    if isinstance(first.get("total_count"), int):
        return int(first["total_count"])
    return sum(1 for _ in iter_objects(base_url, secret_key, resource))
