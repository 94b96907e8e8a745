"""Step 2, authentication: every 401 reason, client addresses behind proxies, and the key caches."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope.core.errors import Refusal
from keyscope.core.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.core.models import ApiKey, KeyUpdate, PlatformEntry
from keyscope.decide.auth import MAX_SECRET, KeyAuthenticator, app_secret
from keyscope.http import canonical
from keyscope.store import StoreUnavailable
from keyscope.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


class CountingStore(SQLiteStore):
    """The real store, counting the gateway's lookups."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.lookups = 0

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        self.lookups += 1
        return await super().find_key_by_hash(secret_hash)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = CountingStore(str(tmp_path / "keyscope.db"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def add_key(store: CountingStore, **fields: Any) -> tuple[ApiKey, str]:
    secret = new_secret()
    now = datetime.now(UTC)
    key = ApiKey(
        id=new_key_id(),
        name="k",
        secret_hash=hash_secret(secret),
        prefix=display_prefix(secret),
        allowed_ips=(),
        valid_from=now - timedelta(minutes=1),
        valid_to=now + timedelta(days=1),
        enabled=True,
    )
    return await store.create_key(replace(key, **fields)), secret


def scope(*headers: tuple[str, str], client: tuple[str, int] | None = ("192.0.2.1", 5000)) -> dict[str, Any]:
    return {
        "type": "http",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": client,
    }


def with_key(secret: str, *extra: tuple[str, str], **kwargs: Any) -> dict[str, Any]:
    return scope(("Authorization", f"App {secret}"), *extra, **kwargs)


async def refused(auth: KeyAuthenticator, request: dict[str, Any]) -> str:
    with pytest.raises(Refusal) as caught:
        await auth.authenticate(request)
    assert caught.value.status == 401 and caught.value.step == "auth"
    return caught.value.reason


async def test_valid_key_is_returned_and_scheme_is_case_insensitive(store: CountingStore) -> None:
    key, secret = await add_key(store)
    auth = KeyAuthenticator(store)
    for scheme in ("App", "app", "APP", "aPp"):
        found = await auth.authenticate(scope(("Authorization", f"{scheme} {secret}")))
        assert found.id == key.id


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ((), "missing_credentials"),
        ((("X-Api-Key", "SECRET"),), "missing_credentials"),
        ((("Authorization", "App SECRET"), ("Authorization", "App SECRET")), "duplicate_authorization"),
        ((("Authorization", "App"),), "malformed_authorization"),
        ((("Authorization", "AppSECRET"),), "malformed_authorization"),
        ((("Authorization", "App  SECRET"),), "malformed_authorization"),
        ((("Authorization", "App SECRET trailing"),), "malformed_authorization"),
        ((("Authorization", "App " + "a" * 600),), "malformed_authorization"),
        ((("Authorization", "Bearer SECRET"),), "unsupported_scheme"),
        ((("Authorization", "Basic SECRET"),), "unsupported_scheme"),
        ((("Authorization", "App SECRETx"),), "unknown_key"),
    ],
)
async def test_malformed_headers(store: CountingStore, headers: tuple[tuple[str, str], ...], reason: str) -> None:
    _, secret = await add_key(store)
    auth = KeyAuthenticator(store)
    request = scope(*((name, value.replace("SECRET", secret)) for name, value in headers))
    assert await refused(auth, request) == reason
    # the same with step 1's header map, as the gateway and the middleware call it
    found = canonical.header_map(request["headers"])
    with pytest.raises(Refusal) as caught:
        await auth.authenticate(request, found)
    assert caught.value.reason == reason
    if reason != "unknown_key":  # refused before any lookup: by reading the header
        with pytest.raises(Refusal) as caught:
            auth.secret_hash(request, found)
        assert caught.value.reason == reason


def _reference_secret(value: bytes) -> bytes | str:
    """app_secret()'s rules spelt out without its fast path: the secret, or the refusal's reason."""
    scheme, space, credentials = value.strip(b" \t").partition(b" ")
    if not space or not scheme or not credentials:
        return "malformed_authorization"
    if scheme.lower() != b"app":
        return "unsupported_scheme"
    if len(credentials) > MAX_SECRET or any(not 0x21 <= byte <= 0x7E for byte in credentials):
        return "malformed_authorization"
    return credentials


_CREDENTIAL_PARTS = st.sampled_from([
    b"App", b"app", b"APP", b"aPp", b"Bearer", b"Apps", b" ", b"  ", b"\t", b"-", b"abc123", b"0" * 250,
    b"\x00", b"\x7f", b"\xc3\xa9", b"\r", b"~", b'"', b"=",
])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_CREDENTIAL_PARTS, max_size=8).map(b"".join))
def test_app_secret_accepts_exactly_the_reference(value: bytes) -> None:
    request = {"type": "http", "headers": [(b"authorization", value)]}
    expected = _reference_secret(value)
    for found in (None, canonical.header_map(request["headers"])):
        try:
            got: bytes | str = app_secret(request, found)
        except Refusal as refusal:
            got = refusal.reason
        assert got == expected


def _cached(auth: KeyAuthenticator, request: dict, found: dict | None = None) -> ApiKey | None:
    record = auth.cached(auth.secret_hash(request, found))
    return None if record is None else record.key


async def test_cached_answers_only_from_the_caches(store: CountingStore) -> None:
    key, secret = await add_key(store)
    auth = KeyAuthenticator(store, negative_ttl=60)
    request = with_key(secret)
    found = canonical.header_map(request["headers"])
    assert _cached(auth, request, found) is None  # not looked up yet: the caller awaits load()
    assert store.lookups == 0
    assert (await auth.authenticate(request, found)).id == key.id
    hit = _cached(auth, request, found)
    assert hit is not None and hit.id == key.id
    assert _cached(auth, request) is hit  # the same record, with or without the header map
    unknown = with_key(new_secret())
    assert _cached(auth, unknown) is None
    assert await refused(auth, unknown) == "unknown_key"
    with pytest.raises(Refusal) as caught:
        _cached(auth, unknown)  # now known to be unknown
    assert caught.value.reason == "unknown_key"
    assert store.lookups == 2
    auth.invalidate()
    assert _cached(auth, request, found) is None and _cached(auth, unknown) is None


async def test_non_ascii_credentials_are_malformed(store: CountingStore) -> None:
    auth = KeyAuthenticator(store)
    request = {"type": "http", "headers": [(b"authorization", b"App caf\xc3\xa9")], "client": ("192.0.2.1", 1)}
    assert await refused(auth, request) == "malformed_authorization"
    assert store.lookups == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"enabled": False}, "key_disabled"),
        ({"valid_to": datetime(2001, 1, 1, tzinfo=UTC), "valid_from": datetime(2000, 1, 1, tzinfo=UTC)}, "key_expired"),
        ({"valid_from": datetime(2999, 1, 1, tzinfo=UTC), "valid_to": datetime(2999, 2, 1, tzinfo=UTC)},
         "key_not_yet_valid"),
        ({"allowed_ips": ("10.0.0.0/8", "2001:db8::/32")}, "ip_not_allowed"),
    ],
)  # fmt: skip
async def test_key_state_refusals(store: CountingStore, fields: dict[str, Any], reason: str) -> None:
    _, secret = await add_key(store, **fields)
    auth = KeyAuthenticator(store)
    assert await refused(auth, with_key(secret)) == reason
    assert await refused(auth, with_key(secret)) == reason  # and the same from the cache
    assert store.lookups == 1


async def test_allowed_ips(store: CountingStore) -> None:
    _, secret = await add_key(store, allowed_ips=("10.0.0.0/8", "2001:db8::1"))
    auth = KeyAuthenticator(store)
    for address in ("10.1.2.3", "2001:db8::1", "::ffff:10.9.9.9"):
        assert await auth.authenticate(with_key(secret, client=(address, 1)))
    for address in ("11.0.0.1", "2001:db8::2", "::ffff:11.0.0.1"):
        assert await refused(auth, with_key(secret, client=(address, 1))) == "ip_not_allowed"
    assert await refused(auth, with_key(secret, client=None)) == "ip_not_allowed"


async def test_forwarded_for_is_only_believed_from_trusted_proxies(store: CountingStore) -> None:
    _, secret = await add_key(store, allowed_ips=("203.0.113.7",))
    untrusting = KeyAuthenticator(store)
    spoofed = with_key(secret, ("X-Forwarded-For", "203.0.113.7"), client=("198.51.100.1", 1))
    assert await refused(untrusting, spoofed) == "ip_not_allowed"

    trusting = KeyAuthenticator(store, trusted_proxies=["198.51.100.0/24", "10.0.0.0/8"])
    assert await trusting.authenticate(spoofed)
    # right-most untrusted address wins: a client cannot prepend its way in
    prepended = with_key(secret, ("X-Forwarded-For", "203.0.113.7, 192.0.2.66"), client=("198.51.100.1", 1))
    assert await refused(trusting, prepended) == "ip_not_allowed"
    # trusted hops on the right are skipped, across several headers
    chained = with_key(
        secret,
        ("X-Forwarded-For", "192.0.2.66, 203.0.113.7"),
        ("X-Forwarded-For", "10.1.1.1"),
        client=("198.51.100.1", 1),
    )
    assert await trusting.authenticate(chained)
    garbage = with_key(secret, ("X-Forwarded-For", "203.0.113.7, not-an-ip"), client=("198.51.100.1", 1))
    assert await refused(trusting, garbage) == "ip_not_allowed"
    # a peer that is not trusted is the client, whatever it forwards
    direct = with_key(secret, ("X-Forwarded-For", "203.0.113.7"), client=("192.0.2.9", 1))
    assert await refused(trusting, direct) == "ip_not_allowed"


async def test_unknown_keys_are_negatively_cached(store: CountingStore) -> None:
    auth = KeyAuthenticator(store, negative_ttl=60)
    unknown = with_key(new_secret())
    for _ in range(50):
        assert await refused(auth, unknown) == "unknown_key"
    assert store.lookups == 1


async def test_negative_cache_is_bounded(store: CountingStore) -> None:
    auth = KeyAuthenticator(store, negative_ttl=60, negative_maxsize=10)
    secrets = [new_secret() for _ in range(20)]
    for secret in secrets:
        await refused(auth, with_key(secret))
    assert store.lookups == 20
    await refused(auth, with_key(secrets[-1]))  # recent: still cached
    assert store.lookups == 20
    await refused(auth, with_key(secrets[0]))  # evicted: asked again
    assert store.lookups == 21


async def test_flood_of_random_keys_does_not_evict_real_keys(store: CountingStore) -> None:
    key, secret = await add_key(store)
    auth = KeyAuthenticator(store, ttl=60, maxsize=10, negative_maxsize=10)
    assert (await auth.authenticate(with_key(secret))).id == key.id
    for _ in range(100):
        await refused(auth, with_key(new_secret()))
    before = store.lookups
    assert (await auth.authenticate(with_key(secret))).id == key.id
    assert store.lookups == before


async def test_known_keys_are_cached_until_invalidated(store: CountingStore) -> None:
    key, secret = await add_key(store)
    other, other_secret = await add_key(store)
    auth = KeyAuthenticator(store, ttl=60)
    for _ in range(10):
        await auth.authenticate(with_key(secret))
        await auth.authenticate(with_key(other_secret))
    assert store.lookups == 2
    await store.update_key(key.id, KeyUpdate(enabled=False))
    assert await auth.authenticate(with_key(secret))  # cached within the TTL, by design
    auth.invalidate(key.id)
    assert await refused(auth, with_key(secret)) == "key_disabled"
    await auth.authenticate(with_key(other_secret))
    assert store.lookups == 3  # only the invalidated key was read again
    auth.invalidate()
    await auth.authenticate(with_key(other_secret))
    assert store.lookups == 4


async def test_invalidate_all_drops_negative_entries(store: CountingStore) -> None:
    auth = KeyAuthenticator(store, negative_ttl=60)
    secret = new_secret()
    await refused(auth, with_key(secret))
    key = ApiKey(
        id=new_key_id(), name="late", secret_hash=hash_secret(secret), prefix=display_prefix(secret), allowed_ips=(),
        valid_from=datetime(2000, 1, 1, tzinfo=UTC), valid_to=datetime(2999, 1, 1, tzinfo=UTC), enabled=True,
    )  # fmt: skip
    await store.create_key(key)
    assert await refused(auth, with_key(secret)) == "unknown_key"
    auth.invalidate()
    assert (await auth.authenticate(with_key(secret))).id == key.id


async def test_zero_ttl_reads_the_store_every_time(store: CountingStore) -> None:
    _, secret = await add_key(store)
    auth = KeyAuthenticator(store, ttl=0)
    for _ in range(3):
        await auth.authenticate(with_key(secret))
    assert store.lookups == 3


async def test_cached_records_and_unknown_secrets_expire_by_the_clock(store: CountingStore) -> None:
    """A key disabled in another process is refused once the TTL has passed, with no invalidation heard."""
    key, secret = await add_key(store)
    now = [100.0]
    auth = KeyAuthenticator(store, ttl=5, negative_ttl=5, clock=lambda: now[0])
    unknown = with_key(new_secret())
    assert (await auth.authenticate(with_key(secret))).id == key.id
    assert await refused(auth, unknown) == "unknown_key"
    await store.update_key(key.id, KeyUpdate(enabled=False))
    now[0] += 4.9
    assert (await auth.authenticate(with_key(secret))).id == key.id  # still cached
    assert await refused(auth, unknown) == "unknown_key"
    assert store.lookups == 2
    now[0] += 0.2
    assert await refused(auth, with_key(secret)) == "key_disabled"  # read again: disabled now
    assert await refused(auth, unknown) == "unknown_key"
    assert store.lookups == 4


async def test_concurrent_misses_share_one_lookup(store: CountingStore) -> None:
    key, secret = await add_key(store, platform=(PlatformEntry("", "default", None, None),))
    auth = KeyAuthenticator(store)
    found: list[str] = []

    async def one() -> None:
        found.append((await auth.authenticate(with_key(secret))).id)

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(one)
    assert found == [key.id] * 20
    assert store.lookups == 1


class GatedStore(CountingStore):
    """The real store, whose lookups wait until the test opens the gate."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = anyio.Event()
        self.waiting = 0

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        self.waiting += 1
        await self.gate.wait()
        return await super().find_key_by_hash(secret_hash)


async def test_a_cancelled_lookup_is_taken_over_by_a_waiting_request(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path / "gated.db"))
    await store.open()
    try:
        key, secret = await add_key(store)
        auth = KeyAuthenticator(store)
        found: list[str] = []
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await auth.authenticate(with_key(secret))

        async def follower() -> None:
            found.append((await auth.authenticate(with_key(secret))).id)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            assert store.waiting == 1  # the follower waits for the leader's lookup
            leader_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert store.waiting == 2  # and takes it over once the leader is gone
            store.gate.set()
        assert found == [key.id]
        assert store.lookups == 1
    finally:
        await store.close()


async def test_concurrent_misses_share_a_store_failure(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path / "gated.db"))
    await store.open()
    _, secret = await add_key(store)
    auth = KeyAuthenticator(store)
    failures: list[type[BaseException]] = []

    async def one() -> None:
        try:
            await auth.authenticate(with_key(secret))
        except StoreUnavailable as exc:
            failures.append(type(exc))

    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        await store.close()
        store.gate.set()
    assert failures == [StoreUnavailable] * 5
    assert store.waiting == 1


async def test_store_unavailable_propagates_and_is_not_cached(store: CountingStore) -> None:
    _, secret = await add_key(store)
    auth = KeyAuthenticator(store)
    path = store.path
    await store.close()
    with pytest.raises(StoreUnavailable):
        await auth.authenticate(with_key(secret))
    with pytest.raises(StoreUnavailable):
        await auth.authenticate(with_key(new_secret()))
    reopened = CountingStore(str(path))
    await reopened.open()
    try:
        auth.store = reopened
        assert await auth.authenticate(with_key(secret))
    finally:
        await reopened.close()


async def test_secrets_are_never_logged(store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = await add_key(store, enabled=False)
    auth = KeyAuthenticator(store)
    await refused(auth, with_key(secret))
    unknown = new_secret()
    await refused(auth, with_key(unknown))
    for text in (secret, unknown):
        assert text not in caplog.text
        assert all(text not in str(record.args) for record in caplog.records)
