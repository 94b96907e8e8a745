"""Step 2 of the request path: who is calling. `Authorization: App <secret>` to a key record, or a 401.

This runs on every request, so the store is asked only on a cache miss: key records are cached by the hash of
their secret for a few seconds (bounded), unknown secrets are cached as unknown (bounded, separately, so a flood
of random secrets cannot evict real keys nor reach the store per request), and concurrent misses for one secret
share a single lookup. Management writes call `invalidate()` so that a change takes effect at once.
Secrets never leave this module except as their hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey
from keyscope.core.types import Scope
from keyscope.http.canonical import HeaderMap
from keyscope.observe import metrics
from keyscope.store.base import Store

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_SECRET = 512

_T = TypeVar("_T")
_sha256 = hashlib.sha256  # keys.hash_secret() for bytes, without its str check
_monotonic = time.monotonic
_time = time.time
_cache_hit = metrics.key_cache_hit  # one count per lookup: the cache answered
_cache_miss = metrics.key_cache_miss  # or the store was asked


@dataclass(frozen=True, slots=True)
class _Cached:
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
    result: _Cached | None = None
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


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


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
    ) -> None:
        self.store = store
        self._ttl = ttl
        self._maxsize = maxsize
        # secret hash -> (key, monotonic deadline): a plain dict, so a hit costs one lookup (a TTLCache hit costs
        # several Python calls); the oldest entries go first when it is full.
        self._keys: dict[bytes, tuple[_Cached, float]] = {}
        # unknown secret hash -> monotonic deadline, the same way, in its own dict
        self._unknown: dict[bytes, float] = {}
        self._negative_ttl = negative_ttl
        self._negative_maxsize = negative_maxsize
        self._hash_by_id: dict[str, bytes] = {}
        self._inflight: dict[bytes, _Lookup] = {}
        self._generation = 0
        self._trusted = parse_networks(trusted_proxies)

    async def authenticate(self, scope: Scope, headers: HeaderMap | None = None) -> ApiKey:
        """The calling key, or Refusal(401). StoreUnavailable propagates: the caller answers 503.

        `headers`: step 1's `canonical.header_map()` of this request, if it made one."""
        secret_hash = _sha256(app_secret(scope, headers)).digest()
        found = self._keys.get(secret_hash)
        if found is not None and found[1] > _monotonic():
            _cache_hit()
            return self._admit(found[0], scope)
        if self._unknown.get(secret_hash, 0.0) > _monotonic():
            _cache_hit()
            raise _refuse("unknown_key", "the API key is not known")
        _cache_miss()
        cached = await self._lookup(secret_hash)
        if cached is None:
            raise _refuse("unknown_key", "the API key is not known")
        return self._admit(cached, scope)

    def cached(self, scope: Scope, headers: HeaderMap | None = None) -> ApiKey | None:
        """`authenticate()` without a coroutine when the answer is cached, as it is for nearly every request:
        the key, or Refusal(401); None when the store must be asked (then call authenticate())."""
        value = headers.get(b"authorization") if headers is not None else None
        plain = None if value is None else _APP_SECRET.fullmatch(value)  # app_secret()'s common case, inline
        secret_hash = _sha256(app_secret(scope, headers) if plain is None else plain[1]).digest()
        found = self._keys.get(secret_hash)
        if found is not None and found[1] > _monotonic():
            _cache_hit()
            return self._admit(found[0], scope)
        if self._unknown.get(secret_hash, 0.0) > _monotonic():
            _cache_hit()
            raise _refuse("unknown_key", "the API key is not known")
        return None  # not counted here: authenticate(), called next, counts the miss

    def _admit(self, cached: _Cached, scope: Scope) -> ApiKey:
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
            if client is None or not any(client in network for network in cached.networks):
                raise _refuse("ip_not_allowed", "the API key may not be used from this address")
        return key

    def client_address(self, scope: Scope) -> IPAddress | None:
        """The peer, or the right-most X-Forwarded-For address that is not a trusted proxy when the peer is
        one. None when it cannot be told, which fails every allowedIPs check."""
        peer = _address(scope["client"][0]) if scope.get("client") else None
        if peer is None or not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = [
            part.strip()
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
            for part in value.split(b",")
        ]
        for raw in reversed(forwarded):
            address = _address(raw.decode("latin-1"))
            if address is None:
                return None
            if not self._is_trusted(address):
                return address
        return peer if not forwarded else _address(forwarded[0].decode("latin-1"))

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

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
            self._keys.pop(secret_hash, None)

    async def _lookup(self, secret_hash: bytes) -> _Cached | None:
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

    async def _load(self, secret_hash: bytes, generation: int) -> _Cached | None:
        key = await self.store.find_key_by_hash(secret_hash)
        cached = None if key is None else _prepare(key)
        if generation == self._generation:  # an invalidate() while we waited makes this answer stale
            if cached is None:
                _remember(self._unknown, secret_hash, _monotonic() + self._negative_ttl, self._negative_maxsize)
            else:
                self._remember(secret_hash, cached)
                self._hash_by_id[cached.key.id] = secret_hash
        return cached

    def _remember(self, secret_hash: bytes, cached: _Cached) -> None:
        _remember(self._keys, secret_hash, (cached, _monotonic() + self._ttl), self._maxsize)


def _remember(cache: dict[bytes, _T], secret_hash: bytes, value: _T, maxsize: int) -> None:
    cache.pop(secret_hash, None)  # re-inserted at the end: the oldest entries come first
    while cache and len(cache) >= maxsize:
        del cache[next(iter(cache))]
    cache[secret_hash] = value


def _prepare(key: ApiKey) -> _Cached:
    return _Cached(key, parse_networks(key.allowed_ips), key.valid_from.timestamp(), key.valid_to.timestamp())


def _address(text: str) -> IPAddress | None:
    """An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) is compared as the IPv4 address it is."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
