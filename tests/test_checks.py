"""The request path's shared pieces, where they have a fast path: each agrees with the plain version of itself."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.decide import checks
from keyscope.decide.checks import Admission, ClientGone, KnownIds, Principal, read_body

pytestmark = pytest.mark.anyio


async def _reference_read_body(receive: Any, declared: int | None, limit: int) -> bytes:
    """read_body() as it was before its one-message fast path: every message through the loop."""
    if declared is not None and declared > limit:
        raise Refusal(413, "body_too_large", "body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "body_too_large", "body")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_MESSAGES = st.lists(
    st.one_of(
        st.builds(
            lambda body, more: {"type": "http.request", "body": body, "more_body": more},
            st.sampled_from([b"", b"a", b"bb", b"ccc", b"x" * 9]),
            st.booleans(),
        ),
        st.just({"type": "http.request"}),  # no body, no more_body: both default
        st.just({"type": "http.request", "body": b"zz"}),
        st.just({"type": "http.disconnect"}),
    ),
    min_size=1,
    max_size=5,
).map(lambda messages: [*messages, {"type": "http.disconnect"}])  # what a server answers once the body is read


async def _outcome(read: Any, messages: list[dict[str, Any]], declared: int | None, limit: int) -> object:
    pending = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(pending)

    try:
        return await read(receive, declared, limit)
    except Refusal as refusal:
        return refusal.status
    except ClientGone:
        return "gone"


@settings(max_examples=500, deadline=None)
@given(_MESSAGES, st.one_of(st.none(), st.integers(0, 12)), st.integers(0, 12))
def test_read_body_agrees_with_the_plain_loop(messages: list[dict[str, Any]], declared: int | None, limit: int) -> None:
    fast = asyncio.run(_outcome(read_body, messages, declared, limit))
    plain = asyncio.run(_outcome(_reference_read_body, messages, declared, limit))
    assert fast == plain


class _NoStore:
    """KnownIds' store for ids it must not ask about."""

    def __init__(self, missing: set[str] | None = None) -> None:
        self.asked: list[tuple[list[str], list[str]]] = []
        self.missing = missing or set()

    async def missing_ids(self, applications: list[str], entities: list[str]) -> tuple[set[str], set[str]]:
        self.asked.append((applications, entities))
        return {i for i in applications if i in self.missing}, {i for i in entities if i in self.missing}


async def test_known_ids_says_known_exactly_when_check_would_not_ask_the_store() -> None:
    store = _NoStore(missing={"gone"})
    known = KnownIds(store, ttl=60)  # type: ignore[arg-type]
    assert known.known((), ())
    assert not known.known(("app",), ())
    await known.check(("app",), ("entity",))
    assert known.known(("app",), ("entity",)) and known.known(("app",), ()) and known.known((), ("entity",))
    assert not known.known(("app", "other"), ("entity",))
    assert not known.known(("app",), ("app",))  # an application is not an entity
    with pytest.raises(Refusal):
        await known.check(("gone",), ())
    assert not known.known(("gone",), ())  # absence is never cached
    asked = len(store.asked)
    await known.check(("app",), ("entity",))
    assert len(store.asked) == asked
    known._applications["app"] = time.monotonic() - 1  # expired
    assert not known.known(("app",), ())
    known.clear()
    assert not known.known((), ("entity",))


def _key(platform: tuple[PlatformEntry, ...] = ()) -> ApiKey:
    now = datetime.now(UTC)
    return ApiKey("K1", "name", b"h" * 32, "prefix", (), now, now, True, platform)


def test_principal_is_made_once_per_key_entry_and_endpoint() -> None:
    entry = PlatformEntry("E1", "app", None)
    key = _key((entry,))
    send = Endpoint("POST", "/sms/2/text/advanced", "Send SMS message", "SMS", (), "legacy")
    logs = Endpoint("GET", "/sms/1/logs", "Get logs", "SMS", (), "legacy")
    first = Admission()
    first.key, first.endpoint = key, send
    principal = first.principal()
    assert principal == Principal("K1", "name", False, entry, send)
    again = Admission()
    again.key, again.endpoint = key, send
    assert again.principal() is principal
    other = Admission()
    other.key, other.endpoint = key, logs
    assert other.principal() == Principal("K1", "name", False, entry, logs)
    primary = Admission()
    primary.key = _key()
    assert primary.principal() == Principal("K1", "name", True, None, None)
    # a combined entry made for one request is a different object: a principal of its own
    combined = Admission()
    combined.key, combined.endpoint, combined.entry = key, send, PlatformEntry("", "app", None)
    assert combined.principal().entry is combined.entry


def test_refusal_answers_are_encoded_once_per_distinct_refusal() -> None:
    one = checks._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "legacy")
    same = checks._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "legacy")
    assert same is one
    other = checks._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not this"), "legacy")
    assert other[1] != one[1]
    assert checks._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "api-error") != one
    assert checks._answer(Refusal(401, "unknown_key", "auth"), "legacy")[0][-1] == (b"www-authenticate", b"App")
