"""Stored answers fit Table Storage whatever Stripe sent (pure; Azurite checks it for real in
test_money_holes.py)."""

from __future__ import annotations

import json

from proxy.answers import BODY_CHUNK_UNITS, MAX_BODY_UNITS, compact_answer, utf16_chunks, utf16_units

ASTRAL = "\U0001F600"


def test_utf16_units_count_astral_characters_twice() -> None:
    assert utf16_units("abc") == 3 and utf16_units("é") == 1 and utf16_units(ASTRAL) == 2


def test_chunks_respect_the_property_limit_and_never_split_a_character() -> None:
    text = ("a" + ASTRAL * 3) * 40_000
    chunks = utf16_chunks(text)
    assert "".join(chunks) == text
    assert all(utf16_units(c) <= BODY_CHUNK_UNITS for c in chunks)
    assert all(2 * utf16_units(c) <= 64 * 1024 for c in chunks)


def test_escaped_answers_are_stored_unescaped_and_compact() -> None:
    doc = {"id": "pi_1", "metadata": {"k": ASTRAL * 500}}
    escaped = json.dumps(doc, indent=2)  # what localstripe sends: 12 characters per astral one
    stored = compact_answer(escaped)
    assert json.loads(stored) == doc and utf16_units(stored) < utf16_units(escaped) / 5


def test_an_answer_too_large_keeps_what_a_replay_needs() -> None:
    doc = {"id": "pi_1", "object": "payment_intent", "amount": 100, "status": "succeeded",
           "customer": {"id": "cus_1", "email": "x"}, "huge": [ASTRAL * 1000] * 400}
    stored = compact_answer(json.dumps(doc))
    kept = json.loads(stored)
    assert utf16_units(stored) <= MAX_BODY_UNITS and kept["spendgate_truncated"] is True
    assert (kept["id"], kept["object"], kept["amount"], kept["status"], kept["customer"]) == (
        "pi_1", "payment_intent", 100, "succeeded", "cus_1")
    assert utf16_units(compact_answer("x" * (MAX_BODY_UNITS + 1))) <= MAX_BODY_UNITS
