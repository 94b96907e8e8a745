"""What every keyscope row needs: a seeded store (two applications, a linked and a primary key) and the bodies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from keyscope.core import keys
from keyscope.core.models import ApiKey, Application, PlatformEntry
from keyscope.store import store_from_url

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
