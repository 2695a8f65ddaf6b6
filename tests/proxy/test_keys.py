"""Vault key format, hashing and header extraction."""

from __future__ import annotations

import base64

import pytest

from core.errors import SpendgateError
from proxy.keys import (
    derive_secret,
    format_vault_key,
    hash_secret,
    key_from_headers,
    new_key_id,
    new_secret,
    parse_vault_key,
    secret_matches,
)


def test_round_trip_and_hash() -> None:
    key_id, secret = new_key_id(), new_secret()
    parsed = parse_vault_key(format_vault_key(key_id, secret))
    assert (parsed.key_id, parsed.secret) == (key_id, secret)
    stored = hash_secret(secret)
    assert secret not in stored and secret_matches(secret, stored) and not secret_matches(secret + "x", stored)


@pytest.mark.parametrize(
    "raw",
    [None, "", "sk_test_123", "vk_", "vk_abc_def", "vk_" + "a" * 20, "vk_" + "g" * 20 + "_" + "x" * 48,
     "vk_" + "a" * 20 + "_short", "vk_" + "a" * 20 + "_" + "x" * 47 + "!", "vk_" + "a" * 20 + "_" + "x" * 200],
)
def test_malformed_keys_are_invalid(raw: str | None) -> None:
    with pytest.raises(SpendgateError) as err:
        parse_vault_key(raw)
    assert err.value.code == "vault_key_invalid" and err.value.status == 401


def test_bearer_and_basic() -> None:
    assert key_from_headers({"authorization": "Bearer vk_x"}) == "vk_x"
    basic = base64.b64encode(b"vk_y:").decode()
    assert key_from_headers({"authorization": f"Basic {basic}"}) == "vk_y"
    assert key_from_headers({"authorization": "Basic !!!"}) is None
    assert key_from_headers({}) is None


def test_derived_secrets_depend_on_the_root_and_the_id_and_parse_as_vault_keys() -> None:
    key_id = new_key_id()
    secret = derive_secret("sk_test_a", key_id)
    assert secret == derive_secret("sk_test_a", key_id)
    assert secret != derive_secret("sk_test_b", key_id) and secret != derive_secret("sk_test_a", new_key_id())
    assert parse_vault_key(format_vault_key(key_id, secret)).secret == secret
