"""localstripe as the stack starts it (devhost/localstripe_boot.py): indexed lists answer as its own scan did.

Its own server of its own (a flush would empty the session's shared localstripe).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devhost.services import start_localstripe

AUTH = ("sk_test_boot", "")


@pytest.fixture()
def stripe_url(tmp_path: Path) -> Iterator[str]:
    service = start_localstripe(log_path=tmp_path / "localstripe.log")
    try:
        yield service.url
    finally:
        service.stop()


def _ids(url: str, path: str, **params: object) -> list[str]:
    ids, after = [], None
    while True:
        query = {"limit": 2, **params, **({"starting_after": after} if after else {})}
        page = httpx.get(f"{url}{path}", params=query, auth=AUTH, timeout=10).json()
        ids += [o["id"] for o in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["data"][-1]["id"]


def test_lists_keep_localstripes_order_and_forget_deleted_and_flushed_objects(stripe_url: str) -> None:
    made = [httpx.post(f"{stripe_url}/v1/customers", data={"name": f"c{i}"}, auth=AUTH, timeout=10).json()["id"]
            for i in range(5)]
    charge = httpx.post(f"{stripe_url}/v1/payment_intents", auth=AUTH, timeout=10, data={
        "amount": 2900, "currency": "usd", "customer": made[0], "payment_method": "pm_card_visa", "confirm": "true",
    }).json()
    assert charge.get("status") == "succeeded", charge
    assert sorted(_ids(stripe_url, "/v1/customers")) == sorted(made)  # every customer, once, across pages
    assert httpx.delete(f"{stripe_url}/v1/customers/{made[2]}", auth=AUTH, timeout=10).status_code == 200
    assert sorted(_ids(stripe_url, "/v1/customers")) == sorted(made[:2] + made[3:])
    assert _ids(stripe_url, "/v1/payment_intents") == [charge["id"]]
    assert _ids(stripe_url, "/v1/refunds") == []
    assert httpx.delete(f"{stripe_url}/_config/data", auth=AUTH, timeout=10).status_code == 200
    assert _ids(stripe_url, "/v1/customers") == [] and _ids(stripe_url, "/v1/payment_intents") == []
