"""Upstream helpers: classification, scrubbing, and the marker lookup's stopping rules."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from proxy.upstream import LookupIncomplete, find_by_marker, scrub, send

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOW = int(T0.timestamp())


def pages(objects: list[dict], page: int = 2) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("starting_after")
        start = next((i + 1 for i, o in enumerate(objects) if o["id"] == after), 0)
        chunk = objects[start:start + page]
        return httpx.Response(200, json={"data": chunk, "has_more": start + page < len(objects)})

    return httpx.Client(base_url="http://stripe.test", transport=httpx.MockTransport(handler))


def obj(i: int, created: int, marker: str | None = None) -> dict:
    return {"id": f"pi_{i}", "created": created, "metadata": {"spendgate_idem": marker} if marker else {}}


def test_finds_the_marked_object_oldest_first() -> None:
    objects = [obj(i, NOW - 3600 + i) for i in range(7)] + [obj(99, NOW + 1, "m")]
    assert find_by_marker(pages(objects), "sk", "/v1/payment_intents", "m", T0)["id"] == "pi_99"  # type: ignore[index]
    assert find_by_marker(pages(objects), "sk", "/v1/payment_intents", "other", T0) is None


def test_newest_first_stops_at_the_cutoff_and_ignores_old_markers() -> None:
    objects = [obj(i, NOW + 100 - i * 400) for i in range(50)]
    objects[30]["metadata"] = {"spendgate_idem": "m"}  # same marker but created long before the record
    seen: list[str] = []
    client = pages(objects)
    client.event_hooks["request"] = [lambda r: seen.append(str(r.url))]
    assert find_by_marker(client, "sk", "/v1/payment_intents", "m", T0) is None
    assert len(seen) <= 2


def test_an_unfinished_walk_is_not_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.upstream.LOOKUP_MAX_PAGES", 3)
    objects = [obj(i, NOW + 10) for i in range(20)]
    with pytest.raises(LookupIncomplete):
        find_by_marker(pages(objects), "sk", "/v1/payment_intents", "m", T0)


def test_send_classifies_and_scrubs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/boom":
            raise httpx.ReadTimeout("late", request=request)
        if request.url.path == "/v1/refused":
            raise httpx.ConnectError("no", request=request)
        return httpx.Response(int(request.url.params.get("s", 200)), text=request.headers["Authorization"])

    http = httpx.Client(base_url="http://stripe.test", transport=httpx.MockTransport(handler))
    assert send(http, "sk_live_x", "GET", "/v1/boom").outcome == "ambiguous"
    assert send(http, "sk_live_x", "GET", "/v1/refused").outcome == "not_sent"
    ok = send(http, "sk_live_x", "GET", "/v1/x", params=[("s", "200")])
    assert ok.definite and ok.body == "Bearer sk_***"
    assert send(http, "sk_live_x", "GET", "/v1/x", params=[("s", "503")]).outcome == "ambiguous"
    assert scrub("a sk_1 b", "sk_1") == "a sk_*** b" and scrub("x", "") == "x"
