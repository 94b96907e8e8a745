"""Key secrets: generation, hashing and display prefixes.

Secrets carry 250 random bits (32 hex digits plus a UUID4, the platform's own shape), so a single
SHA-256 is enough to store them: there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

PREFIX_LENGTH = 8


def new_secret() -> str:
    return f"{secrets.token_hex(16)}-{uuid.UUID(bytes=secrets.token_bytes(16), version=4)}"


def new_key_id() -> str:
    return secrets.token_hex(16).upper()


def new_entry_key() -> str:
    return secrets.token_hex(16).upper()


def hash_secret(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8", "surrogateescape")
    return hashlib.sha256(secret).digest()


def display_prefix(secret: str) -> str:
    """Enough of the secret to tell keys apart in a list, far too little to guess the rest."""
    return secret[:PREFIX_LENGTH]
