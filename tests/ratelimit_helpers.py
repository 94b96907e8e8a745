"""What the rate-limit tests share: the Redis they count in, and a reference model of the algorithm.

`Store`, `checks()`, `admit()` and `decide()` run the request procedure in process over keys held in memory.

The model is a token bucket written the obvious way, with exact fractions: N tokens, refilled continuously at
one per interval (the period over N, rounded up to a microsecond as `keyscope.decide.ratelimit.gcra` says), a
request taking one when every bucket has one. GCRA must agree with it to the microsecond.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import pytest

from keyscope.allowlist.table import load as load_endpoints
from keyscope.core import keys
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey
from keyscope.core.ratelimits import RateLimit
from keyscope.decide.admission import Admission
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.checks import Checks
from keyscope.decide.ratelimit import Limiter

REDIS_URL = "redis://127.0.0.1:6379/15"
"""The Redis the tests count in (database 15, keys under keyscope:rl: named after fresh key ids)."""


def redis_or_skip() -> str:
    """REDIS_URL when something listens there; else skip (fail under CI, where `.ci/run` starts Redis)."""
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=1):
            return REDIS_URL
    except OSError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL}")


@dataclass
class Bucket:
    limit: RateLimit
    tokens: Fraction
    at: int | None = None

    @property
    def interval(self) -> int:
        return math.ceil(Fraction(self.limit.seconds * 1_000_000, self.limit.requests))

    def refill(self, now: int) -> None:
        if self.at is not None:
            self.tokens = min(Fraction(self.limit.requests), self.tokens + Fraction(now - self.at, self.interval))
        self.at = now


class Model:
    """Several buckets counted together: (admitted, limit, remaining, reset µs, retry-after µs) per request."""

    def __init__(self, limits: list[RateLimit]) -> None:
        self.buckets = [Bucket(limit, Fraction(limit.requests)) for limit in limits]

    def request(self, now: int) -> tuple[bool, int, int, int, int]:
        for bucket in self.buckets:
            bucket.refill(now)
        admitted = all(bucket.tokens >= 1 for bucket in self.buckets)
        if admitted:
            for bucket in self.buckets:
                bucket.tokens -= 1
        best: tuple[int, int, int] | None = None  # (remaining, -until full, limit)
        wait = Fraction(0)
        for bucket in self.buckets:
            until_full = (bucket.limit.requests - bucket.tokens) * bucket.interval
            assert until_full.denominator == 1
            candidate = (math.floor(bucket.tokens), -int(until_full), bucket.limit.requests)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
            if not admitted and bucket.tokens < 1:
                wait = max(wait, (1 - bucket.tokens) * bucket.interval)
        assert best is not None
        return admitted, best[2], best[0], -best[1], int(wait)


# the procedure in process -------------------------------------------------------------------------------------
class Store:
    """What the checks ask of a store, answered from memory: one key per secret, every id exists but `nope`."""

    def __init__(self) -> None:
        self.keys: dict[bytes, ApiKey] = {}

    def add(self, key: ApiKey) -> str:
        secret = keys.new_secret()
        self.keys[keys.hash_secret(secret)] = ApiKey(
            key.id, key.name, keys.hash_secret(secret), key.prefix, (), key.valid_from - timedelta(days=1),
            key.valid_to + timedelta(days=1), True, key.platform, rate_limits=key.rate_limits, enforce=key.enforce,
            application_limits=key.application_limits)
        return secret

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        return self.keys.get(secret_hash)

    async def missing_ids(self, applications: Any, entities: Any) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(a for a in applications if a == "nope"), frozenset(e for e in entities if e == "nope")

    async def revision(self) -> int:
        return 0

    async def record_key_use(self, last_used: Any) -> None:
        pass


def http_scope(method: str, target: str, secret: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    path, _, query = target.encode().partition(b"?")
    return {"type": "http", "method": method, "raw_path": path, "path": path.decode(), "query_string": query,
            "headers": [(b"host", b"gw.test"), (b"authorization", b"App " + secret.encode()), *headers],
            "client": ("127.0.0.1", 40000), "scheme": "http", "http_version": "1.1"}


LOOP = asyncio.new_event_loop()
"""One event loop for every Checks made here (the Redis client keeps to the loop it first ran in)."""
ENDPOINTS = load_endpoints(None)


def checks(store: Store, clock: list[float], limiter: Limiter | None = None, **options: Any) -> Checks:
    """Checks over `store` with local counters on `clock` (or `limiter`), and an event loop of their own."""
    made = Checks(endpoints=ENDPOINTS, store=store,  # type: ignore[arg-type]
                  authenticator=KeyAuthenticator(store, ttl=3600), id_cache_ttl=3600,  # type: ignore[arg-type]
                  limiter=limiter or Limiter(clock=lambda: clock[0]), **options)
    made.watcher.interval = 3600.0
    LOOP.run_until_complete(made.watcher.start())
    return made


def run(made: Checks, coroutine: Any) -> Any:
    return LOOP.run_until_complete(coroutine)


def admit(made: Checks, scope: dict[str, Any], body: bytes = b"") -> Admission | Refusal:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    admission = Admission()
    try:
        run(made, made.admit(scope, receive, admission, made.target(scope)))
    except Refusal as refusal:
        return refusal
    return admission


def decide(made: Checks, scope: dict[str, Any], body: bytes = b"") -> Admission | Refusal | None:
    """`Checks.decide()`: the admission, the refusal, or None when it stepped aside."""
    admission = Admission()
    try:
        return admission if made.decide(scope, body, admission, made.target(scope)) else None
    except Refusal as refusal:
        return refusal


