"""Model-facing failures: one JSON shape; STOP texts say stop, don't retry, tell the user."""

from __future__ import annotations

import json

import pytest

from agents import messages


@pytest.mark.parametrize("code", sorted(messages.STOP_CODES))
def test_stop_codes_tell_the_model_to_stop_not_retry_and_tell_the_user(code: str) -> None:
    out = json.loads(messages.error_output(code, "ignored detail", retryable=True))
    assert out["error"] == code and out["stop"] is True and out["retryable"] is False
    text = out["message"]
    assert text.startswith("STOP:")
    assert "Do not call charge_stripe again" in text and "do not retry" in text
    assert "Tell the user" in text and "Nothing was charged" in text
    assert messages.is_stop(json.dumps(out))


def test_other_errors_keep_their_message_and_retry_flag() -> None:
    out = json.loads(
        messages.error_output("upstream_unavailable", "try once more", retryable=True, idempotency_key="k")
    )
    assert out == {
        "error": "upstream_unavailable",
        "message": "try once more",
        "retryable": True,
        "stop": False,
        "idempotency_key": "k",
    }
    assert not messages.is_stop(json.dumps(out))


def test_a_stop_code_can_be_demoted_where_it_does_not_end_billing() -> None:
    out = json.loads(messages.error_output("vault_key_revoked", "lookups are off", stop=False))
    assert out["stop"] is False and out["message"] == "lookups are off"


@pytest.mark.parametrize("text", ["not json", "[1]", '{"charge_id": "pi_1"}', ""])
def test_is_stop_is_false_for_anything_else(text: str) -> None:
    assert not messages.is_stop(text)
