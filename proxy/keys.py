"""Vault keys: how they are made, parsed and checked.

A vault key looks like ``vk_<key_id>_<secret>``. The key id is public (it names the
key in URLs, audit rows and logs); the secret is shown once at issue time and only its
SHA-256 is stored. Secrets are 256 random bits, so a plain hash (no salt, no slow KDF)
is enough: there is nothing to brute-force. Comparison is constant-time.

Keys the app issues to itself (a billing run's keys) use a *derived* secret instead:
HMAC-SHA256 of the key id under the app's Stripe secret. An activity holding only the
key id re-derives the secret in-process, so orchestration history, which Durable stores
in plain text, carries key ids only. Whoever could derive such a secret already holds the
Stripe secret itself, so derivation adds no exposure; rotating the Stripe secret
invalidates every derived key at once (runs in flight stop with `vault_key_invalid`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from core.errors import SpendgateError

KEY_PREFIX = "vk_"
_KEY_ID = re.compile(r"^[a-f0-9]{20}$")
_SECRET = re.compile(r"^[A-Za-z0-9]{40,64}$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class ParsedVaultKey:
    """A syntactically valid vault key, split into its public id and its secret."""

    key_id: str
    secret: str


def new_key_id() -> str:
    """A fresh public key id (20 hex chars, no underscore, safe in table keys and URLs)."""
    return secrets.token_hex(10)


def new_secret() -> str:
    """A fresh 48-char alphanumeric secret (~285 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(48))


def derive_secret(root_secret: str, key_id: str) -> str:
    """The secret of an in-app key: 64 hex chars (256 bits), reproducible only with `root_secret`."""
    message = f"spendgate/in-app-vault-key/v1/{key_id}".encode("ascii")
    return hmac.new(root_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def format_vault_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def is_valid_key_id(key_id: str) -> bool:
    return bool(_KEY_ID.match(key_id))


def parse_vault_key(raw: str | None) -> ParsedVaultKey:
    """Split a presented vault key; anything malformed is `vault_key_invalid`."""
    if not raw or not raw.startswith(KEY_PREFIX) or len(raw) > 128:
        raise SpendgateError("vault_key_invalid", "No valid vault key was presented (expected vk_<id>_<secret>).")
    key_id, sep, secret = raw[len(KEY_PREFIX):].partition("_")
    if not sep or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
        raise SpendgateError("vault_key_invalid", "No valid vault key was presented (expected vk_<id>_<secret>).")
    return ParsedVaultKey(key_id, secret)


def key_from_headers(headers: dict[str, str]) -> str | None:
    """The vault key from `Authorization: Bearer …` or HTTP Basic (the key as username)."""
    auth = headers.get("authorization", "").strip()
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return decoded.partition(":")[0] or None
    return None
