"""Step 2 of the request path: who is calling. `Authorization: App <secret>` to a key record, or a 401.

This runs on every request, so the store is asked only on a cache miss: key records are cached by the hash of
their secret for a few seconds (bounded), unknown secrets are cached as unknown (bounded, separately, so a flood
of random secrets cannot evict real keys nor reach the store per request), and concurrent misses for one secret
share a single lookup. Management writes call `invalidate()` so that a change takes effect at once.
Secrets never leave this module except as their hash.

The parts are separate so that the request procedure (`keyscope.decide.procedure`) can run them without
awaiting anything when the cache answers: `secret_hash()` reads the header, `cached()` asks the caches,
`load()` (the only coroutine) asks the store, and `admit()` checks the record against this request.
`authenticate()` is the four in a row, for callers that may await (the management API).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio

from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey
from keyscope.core.networks import IPAddress, IPNetwork, parse_address, parse_networks, within
from keyscope.core.ttlcache import Clock, TTLCache
from keyscope.core.types import Scope
from keyscope.http.canonical import HeaderMap
from keyscope.observe import metrics
from keyscope.store.base import Store

MAX_SECRET = 512

_sha256 = hashlib.sha256  # keys.hash_secret() for bytes, without its str check
_time = time.time
_perf_counter = time.perf_counter
_cache_hit = metrics.key_cache_hit  # one count per lookup: the cache answered
_cache_miss = metrics.key_cache_miss  # or the store was asked


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key with what every request needs precomputed: its networks and its validity as timestamps."""

    key: ApiKey
    networks: tuple[IPNetwork, ...]
    valid_from: float
    valid_to: float


@dataclass(slots=True)
class _Lookup:
    """A store lookup in flight, which concurrent misses for the same secret wait for instead of repeating."""

    done: anyio.Event = field(default_factory=anyio.Event)
    finished: bool = False
    result: KeyRecord | None = None
    error: Exception | None = None


def _refuse(reason: str, detail: str) -> Refusal:
    return Refusal(401, reason=reason, step="auth", detail=detail)


def authorization_header(scope: Scope, headers: HeaderMap | None = None) -> bytes:
    """The single Authorization header's value; none or several are refused (several are ambiguous).

    `headers` is step 1's `canonical.header_map()` of the same request, when it made one: with every name
    in lower case and sent once, the header is one lookup away.
    """
    if headers is not None:
        found = headers.get(b"authorization")
    else:
        found = None
        for name, value in scope["headers"]:
            if len(name) == 13 and name.lower() == b"authorization":
                if found is not None:
                    raise _refuse("duplicate_authorization", "more than one Authorization header")
                found = value
    if found is None:
        raise _refuse("missing_credentials", "no Authorization header")
    return found


def split_credentials(value: bytes) -> tuple[bytes, bytes]:
    """`<scheme> <credentials>` with exactly one space; the scheme lowercased."""
    scheme, space, credentials = value.strip(b" \t").partition(b" ")
    if not space or not scheme or not credentials:
        raise _refuse("malformed_authorization", "expected 'Authorization: <scheme> <credentials>'")
    return scheme.lower(), credentials


_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]*")
# Exactly what app_secret() accepts below, in one match: the common case.
_APP_SECRET = re.compile(rb"[ \t]*[Aa][Pp][Pp] ([\x21-\x7e]{1,%d})[ \t]*" % MAX_SECRET)


def _visible_ascii(data: bytes) -> bool:
    return _VISIBLE_ASCII.fullmatch(data) is not None


def app_secret(scope: Scope, headers: HeaderMap | None = None) -> bytes:
    """The API key sent as `Authorization: App <secret>` (scheme case-insensitive)."""
    value = authorization_header(scope, headers)
    plain = _APP_SECRET.fullmatch(value)
    if plain is not None:
        return plain[1]
    scheme, secret = split_credentials(value)
    if scheme != b"app":
        raise _refuse("unsupported_scheme", "use 'Authorization: App <API key>'")
    if len(secret) > MAX_SECRET or not _visible_ascii(secret):
        raise _refuse("malformed_authorization", "the API key is malformed")
    return secret


class KeyAuthenticator:
    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 5.0,
        maxsize: int = 100_000,
        negative_ttl: float = 5.0,
        negative_maxsize: int = 100_000,
        trusted_proxies: Iterable[str] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self._keys: TTLCache[bytes, KeyRecord] = TTLCache(ttl, maxsize, clock)
        self._unknown: TTLCache[bytes, bool] = TTLCache(negative_ttl, negative_maxsize, clock)
        self._hash_by_id: dict[str, bytes] = {}
        self._inflight: dict[bytes, _Lookup] = {}
        self._generation = 0
        self.trusted: tuple[IPNetwork, ...] = parse_networks(trusted_proxies)
        self._clients: dict[str, str | None] = {}

    async def authenticate(self, scope: Scope, headers: HeaderMap | None = None) -> ApiKey:
        """The calling key, or Refusal(401). StoreUnavailable propagates: the caller answers 503.

        `headers`: step 1's `canonical.header_map()` of this request, if it made one."""
        secret_hash = self.secret_hash(scope, headers)
        cached = self.cached(secret_hash)
        if cached is None:
            cached = await self.load(secret_hash)
        return self.admit(cached, scope)

    def secret_hash(self, scope: Scope, headers: HeaderMap | None = None) -> bytes:
        """The hash the key records are found by, of the secret in `Authorization: App <secret>`; or Refusal(401)."""
        value = headers.get(b"authorization") if headers is not None else None
        plain = None if value is None else _APP_SECRET.fullmatch(value)  # app_secret()'s common case, inline
        return _sha256(app_secret(scope, headers) if plain is None else plain[1]).digest()

    def cached(self, secret_hash: bytes) -> KeyRecord | None:
        """The cached record; Refusal(401) for a secret cached as unknown; None when the store must be asked."""
        found = self._keys.get(secret_hash)
        if found is not None:
            _cache_hit()
            return found
        if self._unknown.get(secret_hash) is not None:
            _cache_hit()
            raise _refuse("unknown_key", "the API key is not known")
        return None

    async def load(self, secret_hash: bytes) -> KeyRecord:
        """The record from the store (concurrent misses for one secret share the lookup), or Refusal(401)."""
        _cache_miss()
        cached = await self._lookup(secret_hash)
        if cached is None:
            raise _refuse("unknown_key", "the API key is not known")
        return cached

    def admit(self, cached: KeyRecord, scope: Scope) -> ApiKey:
        """The key, if it may be used now and from this client; else Refusal(401)."""
        key = cached.key
        if not key.enabled:
            raise _refuse("key_disabled", "the API key is disabled")
        now = _time()
        if now < cached.valid_from:
            raise _refuse("key_not_yet_valid", "the API key is not valid yet")
        if now >= cached.valid_to:
            raise _refuse("key_expired", "the API key has expired")
        if cached.networks:
            client = self.client_address(scope)
            if client is None or not within(client, cached.networks):
                raise _refuse("ip_not_allowed", "the API key may not be used from this address")
        return key

    def client_address(self, scope: Scope) -> IPAddress | None:
        """The peer, or the right-most X-Forwarded-For address that is not a trusted proxy when the peer is
        one. None when it cannot be told, which fails every allowedIPs check."""
        peer = parse_address(scope["client"][0]) if scope.get("client") else None
        trusted = self.trusted
        if peer is None or not trusted or not within(peer, trusted):
            return peer
        forwarded = [
            part.strip()
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
            for part in value.split(b",")
        ]
        for raw in reversed(forwarded):
            address = parse_address(raw.decode("latin-1"))
            if address is None:
                return None
            if not within(address, trusted):
                return address
        return peer if not forwarded else parse_address(forwarded[0].decode("latin-1"))

    def client_text(self, scope: Scope) -> str | None:
        """`client_address()` as the access line shows it. Without trusted proxies it depends on the peer
        alone, and is remembered per peer."""
        client = scope.get("client")
        if self.trusted:
            address = self.client_address(scope)
            return None if address is None else str(address)
        if client is None:
            return None
        clients = self._clients
        peer = client[0]
        known = clients.get(peer, clients)
        if known is not clients:
            return known  # type: ignore[return-value]
        address = self.client_address(scope)
        if len(clients) >= 4096:
            clients.clear()
        text = clients[peer] = None if address is None else str(address)
        return text

    def invalidate(self, key_id: str | None = None) -> None:
        """Drop one key's cached record, or everything (None) including unknown secrets and lookups in flight."""
        self._generation += 1
        self._inflight.clear()
        if key_id is None:
            self._keys.clear()
            self._unknown.clear()
            self._hash_by_id.clear()
            return
        secret_hash = self._hash_by_id.pop(key_id, None)
        if secret_hash is not None:
            self._keys.pop(secret_hash)

    async def _lookup(self, secret_hash: bytes) -> KeyRecord | None:
        while (pending := self._inflight.get(secret_hash)) is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            if pending.finished:
                return pending.result
            # the task doing the lookup was cancelled: this one does it instead
        lookup = self._inflight[secret_hash] = _Lookup()
        try:
            lookup.result = await self._load(secret_hash, self._generation)
            lookup.finished = True
            return lookup.result
        except Exception as exc:
            lookup.error = exc
            raise
        finally:
            if self._inflight.get(secret_hash) is lookup:
                del self._inflight[secret_hash]
            lookup.done.set()

    async def _load(self, secret_hash: bytes, generation: int) -> KeyRecord | None:
        started = _perf_counter()
        try:
            key = await self.store.find_key_by_hash(secret_hash)
        except Exception:
            metrics.store_call("find_key", started, failed=True)
            raise
        metrics.store_call("find_key", started)
        cached = None if key is None else _prepare(key)
        if generation == self._generation:  # an invalidate() while we waited makes this answer stale
            if cached is None:
                self._unknown.put(secret_hash, True)
            else:
                self._keys.put(secret_hash, cached)
                self._hash_by_id[cached.key.id] = secret_hash
        return cached


def _prepare(key: ApiKey) -> KeyRecord:
    return KeyRecord(key, parse_networks(key.allowed_ips), key.valid_from.timestamp(), key.valid_to.timestamp())
