"""The request path's shared pieces: the body reader, the id-existence cache, principals, refusal encoding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.decide import answers
from keyscope.decide.admission import Admission, Principal
from keyscope.decide.body import ClientGone, read_body
from keyscope.decide.known_ids import KnownIds

pytestmark = pytest.mark.anyio


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


def _expected(messages: list[dict[str, Any]], limit: int) -> tuple[object, int]:
    """What reading must give, and how many messages it may receive: the bodies up to the first message without
    more_body, 413 as soon as they pass the limit, "gone" at a disconnect before the end."""
    body = b""
    for count, message in enumerate(messages, 1):
        if message["type"] == "http.disconnect":
            return "gone", count
        body += message.get("body", b"")
        if len(body) > limit:
            return 413, count
        if not message.get("more_body", False):
            return body, count
    raise AssertionError("the messages always end in a disconnect")


@settings(max_examples=300, deadline=None)
@given(_MESSAGES, st.integers(0, 12))
def test_read_body_reads_to_the_end_and_never_past_the_limit(messages: list[dict[str, Any]], limit: int) -> None:
    pending = iter(messages)
    read: list[int] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return next(pending)

    async def outcome() -> object:
        try:
            return await read_body(receive, limit)
        except Refusal as refusal:
            return refusal.status
        except ClientGone:
            return "gone"

    assert (asyncio.run(outcome()), len(read)) == _expected(messages, limit)  # and nothing received after the end


class _CountingStore:
    """KnownIds' store: answers which ids are missing and counts the questions."""

    def __init__(self, missing: set[str] | None = None) -> None:
        self.asked: list[tuple[list[str], list[str]]] = []
        self.missing = missing or set()

    async def missing_ids(self, applications: list[str], entities: list[str]) -> tuple[set[str], set[str]]:
        self.asked.append((list(applications), list(entities)))
        return {i for i in applications if i in self.missing}, {i for i in entities if i in self.missing}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_known_ids_ask_the_store_only_for_ids_not_seen_to_exist_within_the_ttl() -> None:
    store, clock = _CountingStore(missing={"gone"}), _Clock()
    known = KnownIds(store, ttl=60, clock=clock)  # type: ignore[arg-type]
    assert known.unknown((), ()) is None
    assert known.unknown(("app",), ()) == (["app"], [])
    await known.look_up(["app"], ["entity"])
    assert known.unknown(("app",), ("entity",)) is None
    assert known.unknown(("app", "other"), ("entity",)) == (["other"], [])
    assert known.unknown(("app",), ("app",)) == ([], ["app"])  # an application is not an entity
    with pytest.raises(Refusal) as refused:
        await known.look_up(["gone"], [])
    assert (refused.value.status, refused.value.reason) == (400, "unknown_application")
    assert known.unknown(("gone",), ()) == (["gone"], [])  # absence is never cached
    clock.now += 59.9
    assert known.unknown(("app",), ("entity",)) is None
    clock.now += 0.2  # past the ttl: asked again
    assert known.unknown(("app",), ("entity",)) == (["app"], ["entity"])
    await known.look_up(["app"], ["entity"])
    known.clear()
    assert known.unknown((), ("entity",)) == ([], ["entity"])


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
    one = answers._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "legacy")
    same = answers._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "legacy")
    assert same is one
    other = answers._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not this"), "legacy")
    assert other[1] != one[1]
    assert answers._answer(Refusal(403, "id_out_of_scope", "scope", "applicationId", "not yours"), "api-error") != one
    assert answers._answer(Refusal(401, "unknown_key", "auth"), "legacy")[0][-1] == (b"www-authenticate", b"App")
