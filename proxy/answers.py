"""Stored answers: what a completed idempotency record keeps, within Table Storage's limits.

A record's answer is written after the money moved, so that write must not be refused for
its size (issue 13, case 5). Table Storage counts a string property's size in UTF-16 and
allows 64 KiB per property and 1 MiB per entity; `compact_answer` makes any answer fit the
budget below and `utf16_chunks` cuts it into properties (proxy/store.py writes them).
"""

from __future__ import annotations

import json
from typing import Any

# Table Storage limits (learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model):
# a string property holds at most 64 KiB, counted in UTF-16 (Azurite enforces it); an entity
# at most 1 MiB (Azurite does not). A stored answer is therefore cut into properties of at
# most 32,000 UTF-16 code units (64,000 bytes), at most 8 of them (512,000 bytes), leaving
# room for the rest of the record and the entity overhead.
BODY_CHUNK_UNITS = 32_000
MAX_BODY_CHUNKS = 8
MAX_BODY_UNITS = BODY_CHUNK_UNITS * MAX_BODY_CHUNKS


def utf16_units(text: str) -> int:
    """Length as Table Storage counts it: UTF-16 code units (2 for a character beyond U+FFFF)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF) if not text.isascii() else len(text)


def utf16_chunks(text: str, units: int = BODY_CHUNK_UNITS) -> list[str]:
    """`text` cut into pieces of at most `units` UTF-16 code units (never inside a character)."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + units)
        while utf16_units(text[start:end]) > units:
            end -= utf16_units(text[start:end]) - units  # each character dropped frees at least one unit
        out.append(text[start:end])
        start = end
    return out


def compact_answer(body: str) -> str:
    """An answer as stored for replay: within `MAX_BODY_UNITS`, whatever Stripe sent.

    JSON is re-serialised compactly (no indentation, characters unescaped: an astral
    character escaped as ``\\ud83d\\ude00`` is 12 units, raw it is 2). If it is still too
    large, only what a replay needs is kept: the top-level scalar fields (ids, amount,
    currency, status, …), nested objects reduced to their id, and
    ``"spendgate_truncated": true``. The client that got the original answer got it whole;
    only a later replay sees the reduced one."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if doc is None:
        return body if utf16_units(body) <= MAX_BODY_UNITS else json.dumps({"spendgate_truncated": True})
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    if utf16_units(text) <= MAX_BODY_UNITS:
        return text
    reduced: dict[str, Any] = {"spendgate_truncated": True}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, str | int | float | bool) or v is None:
                if not isinstance(v, str) or len(v) <= 1000:
                    reduced[k] = v
            elif isinstance(v, dict) and isinstance(v.get("id"), str):
                reduced[k] = v["id"][:255]
    text = json.dumps(reduced, separators=(",", ":"), ensure_ascii=False)
    if utf16_units(text) <= MAX_BODY_UNITS:
        return text
    return json.dumps({"id": str(reduced.get("id", ""))[:255], "object": str(reduced.get("object", ""))[:100],
                       "spendgate_truncated": True})
