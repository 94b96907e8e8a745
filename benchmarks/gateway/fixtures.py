"""What every keyscope row needs: a seeded store (two applications, a linked and a primary key) and the bodies;
and for the rate-limit rows, a linked key with limits it never reaches (`seed_limited`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from keyscope.core import keys
from keyscope.core.models import ApiKey, Application, PlatformEntry
from keyscope.core.ratelimits import RateLimit
from keyscope.store import store_from_url

LIMITS = (RateLimit(1_000_000, "second"), RateLimit(1_000_000_000, "day"))
"""The limited key's: two limits (a burst and a daily quota), both counted on every request, never reached."""
APP = "bench-app"
OTHER_APP = "bench-other"
BODY_SIZE = 1024


def message_body(application: str) -> bytes:
    """A 1 KB SMS send naming `application` in messages[] (where endpoints.yaml says the ids are)."""
    message = {"destinations": [{"to": "41793026727"}], "from": "InfoSMS", "text": "", "applicationId": application}
    bare = len(json.dumps({"messages": [message]}, separators=(",", ":")))
    message["text"] = "x" * (BODY_SIZE - bare)
    body = json.dumps({"messages": [message]}, separators=(",", ":")).encode()
    assert len(body) == BODY_SIZE, len(body)
    return body


async def seed(store_url: str) -> tuple[str, str]:
    """Two applications and two keys, written through the store as `keyscope.demo` does: (linked, primary)."""
    store = store_from_url(store_url, create=True)  # the benchmark's own store, made fresh each run
    await store.open()
    try:
        await store.create_application(Application(APP, "Benchmark"))
        await store.create_application(Application(OTHER_APP, "Benchmark, other"))
        made = []
        for name, platform_entries in (("bench-linked", (PlatformEntry("", APP, None),)), ("bench-primary", ())):
            secret = keys.new_secret()
            now = datetime.now(timezone.utc).replace(microsecond=0)
            await store.create_key(
                ApiKey(
                    id=keys.new_key_id(), name=name, secret_hash=keys.hash_secret(secret),
                    prefix=keys.display_prefix(secret), allowed_ips=(), valid_from=now,
                    valid_to=now + timedelta(days=1), enabled=True, platform=platform_entries, created_at=now,
                )
            )
            made.append(secret)
    finally:
        await store.close()
    return made[0], made[1]


async def seed_limited(store_url: str) -> str:
    """One more key in the seeded store, linked like `bench-linked` but with `LIMITS`: its secret."""
    store = store_from_url(store_url)
    await store.open()
    try:
        secret = keys.new_secret()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        await store.create_key(
            ApiKey(
                id=keys.new_key_id(), name="bench-limited", secret_hash=keys.hash_secret(secret),
                prefix=keys.display_prefix(secret), allowed_ips=(), valid_from=now,
                valid_to=now + timedelta(days=1), enabled=True, platform=(PlatformEntry("", APP, None),),
                created_at=now, rate_limits=LIMITS,
            )
        )
    finally:
        await store.close()
    return secret
