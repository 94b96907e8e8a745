"""What a receiver can check an event by: the headers sent with it and its HMAC-SHA256 signature.

    Content-Type: application/json
    X-Keyscope-Event-Id: <the body's id>          the same on every retry: deduplicate on it
    X-Keyscope-Event-Type: <the body's type>
    X-Keyscope-Delivery-Attempt: <1, 2, ...>      this receiver's attempt at this event
    X-Keyscope-Signature: sha256=<hex>            HMAC-SHA256(--events-secret, the raw body)

The signature covers the body exactly as sent, which holds the id, the type and the time, so a receiver that
verifies it (over the bytes it received, before parsing, with a constant-time comparison: `verify()`) and
deduplicates on the id accepts each event once and nothing forged. The secret never leaves the process: not in
the store, not in a log line, not in an answer.
"""

from __future__ import annotations

import hashlib
import hmac

from keyscope import __version__
from keyscope.store.outbox import Event

SIGNATURE = "X-Keyscope-Signature"
PREFIX = "sha256="


def signature(secret: str, body: bytes) -> str:
    """The header's value: `sha256=` and the hex HMAC-SHA256 of `body` keyed with the secret's UTF-8 bytes."""
    return PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute over the raw body and compare in constant time."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


def headers(event: Event, body: bytes, secret: str, attempt: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"Content-Type", b"application/json"),
        (b"User-Agent", f"keyscope/{__version__}".encode("ascii")),
        (b"X-Keyscope-Event-Id", event.id.encode("ascii")),
        (b"X-Keyscope-Event-Type", event.type.encode("ascii")),
        (b"X-Keyscope-Delivery-Attempt", str(attempt).encode("ascii")),
        (SIGNATURE.encode("ascii"), signature(secret, body).encode("ascii")),
    ]
