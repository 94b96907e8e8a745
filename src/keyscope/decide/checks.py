"""Steps 1-5 of the request path, shared by the gateway and the middleware: one implementation of the rules.

`Checks.target()` is step 1 (canonical target). `Checks.admit()` runs steps 2-5 top to bottom: authenticate,
match the allowlist, read the body when the ids in it must be inspected, check and FILL/FORCE the ids, and
check that every id names an existing application or entity. It fills an `Admission` as it goes, so that when
it raises a `Refusal` the caller still knows the endpoint (for the error family) and the key (for the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

from keyscope import scope as scoping
from keyscope.allowlist import matcher
from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import JSON_HEADERS, Family, Refusal, refusal_body
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.types import Receive, Scope, Send
from keyscope.decide.auth import KeyAuthenticator
from keyscope.http import canonical
from keyscope.http.canonical import HeaderMap
from keyscope.observe import accesslog, metrics
from keyscope.store.base import Store, StoreUnavailable
from keyscope.store.watch import ChangeWatcher

logger = logging.getLogger("keyscope.gateway")

USAGE_FLUSH_SECONDS = 60.0

_monotonic = time.monotonic
_time = time.time


class ClientGone(Exception):
    """The client disconnected while its body was being read: there is nobody left to answer."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the middleware hands it to the wrapped app in `scope["state"]["keyscope"]`."""

    key_id: str
    name: str
    primary: bool
    entry: PlatformEntry | None
    endpoint: Endpoint | None


class Admission:
    """What the checks decided about one request; filled step by step."""

    __slots__ = ("endpoint", "key", "entry", "query", "body", "changed", "request_id", "user_agent", "client",
                 "principal_id", "bytes_in", "bytes_out", "upstream_ms", "cause")

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.key: ApiKey | None = None
        self.entry: PlatformEntry | None = None
        self.query = b""
        self.body: bytes | None = None  # None: not read, stream it
        self.changed = False
        # for the access line and the X-Request-Id header, from `begin()` on
        self.request_id: str | None = None
        self.user_agent: bytes | None = None
        self.client: str | None = None
        self.principal_id: str | None = None  # who made a management call: "admin", or a key id
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_ms: float | None = None
        self.cause: str | None = None  # why a forwarded request failed: upstream_refused, _timeout, _reset

    def begin(self, scope: Scope, headers: HeaderMap | None, authenticator: KeyAuthenticator) -> str:
        """Note the request id (the client's X-Request-Id when sane, else a new one), the user agent, the body's
        declared length and the client address (as authentication computes it, through --trusted-proxies);
        returns the request id."""
        if headers is not None:
            given = headers.get(b"x-request-id")
            self.user_agent = headers.get(b"user-agent")
            length = headers.get(b"content-length")
        else:
            given = agent = length = None
            count = 0
            for name, value in scope["headers"]:
                if len(name) == 12 and name.lower() == b"x-request-id":
                    given = value
                    count += 1
                elif len(name) == 10 and name.lower() == b"user-agent":
                    agent = value
                elif len(name) == 14 and name.lower() == b"content-length":
                    length = value
            self.user_agent = agent
            if count > 1:
                given = None  # sent twice: neither is the client's id
        if length is not None and length.isdigit() and len(length) < 19:
            self.bytes_in = int(length)  # as declared, until the forwarding counts what came
        self.client = client_text(authenticator, scope)
        self.request_id = rid = accesslog.request_id(given)
        return rid

    async def refused(
        self, scope: Scope, send: Send, refusal: Refusal, started: float, authenticator: KeyAuthenticator
    ) -> None:
        """Answer a refusal on the ASGI path and log it: the gateway's and the middleware's one way."""
        if self.request_id is None:  # step 1 refused: the head has no header map
            self.begin(scope, None, authenticator)
        self.bytes_out = await refuse(send, refusal, self.family, self.request_id)
        self.log(started, scope, accesslog.REFUSED, refusal.status, refusal)

    @property
    def family(self) -> Family:
        return self.endpoint.errors if self.endpoint is not None else "legacy"

    @property
    def function(self) -> str | None:
        return self.endpoint.function if self.endpoint is not None else None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    def effective_entry(self) -> PlatformEntry | None:
        """The entry that admitted the request; a key with a single entry is always admitted by that one."""
        if self.entry is not None or self.key is None:
            return self.entry
        platform = self.key.platform
        return platform[0] if len(platform) == 1 else None

    def identity_headers(self) -> list[tuple[str, str]]:
        """X-Keyscope-* for the backend: absent for kinds the entry leaves unset, all but the id for primaries."""
        assert self.key is not None
        headers = [("X-Keyscope-Key-Id", self.key.id)]
        entry = self.effective_entry()
        if entry is not None:
            if entry.application_id is not None:
                headers.append(("X-Keyscope-Application-Id", entry.application_id))
            if entry.entity_id is not None:
                headers.append(("X-Keyscope-Entity-Id", entry.entity_id))
        return headers

    def log(
        self,
        started: float,
        scope: Scope,
        decision: str,
        status: int,
        refusal: Refusal | None = None,
        upstream: int | None = None,
    ) -> None:
        """Step 8: the request's access line, from what the checks decided and how the answer went."""
        key, endpoint = self.key, self.endpoint
        if refusal is not None:
            reason, step = refusal.reason, refusal.step
        elif self.cause is not None:
            reason, step = self.cause, "upstream"
        else:
            reason = step = None
        function = None if endpoint is None else endpoint.function
        metrics.record(started, decision, status, reason, step, function, self.upstream_ms, self.cause)
        accesslog.write(
            started,
            scope["method"],
            scope["raw_path"],
            decision,
            status,
            self.principal_id if key is None else key.id,
            function,
            reason,
            step,
            upstream,
            self.client,
            self.request_id,
            self.bytes_in,
            self.bytes_out,
            self.user_agent,
            self.upstream_ms,
        )

    def principal(self) -> Principal:
        """The caller for the wrapped app; one Principal per (key record, entry, endpoint), made once."""
        key, endpoint = self.key, self.endpoint
        assert key is not None
        entry = self.effective_entry()
        ident = (id(key), id(entry), id(endpoint))
        known = _PRINCIPALS.get(ident)
        # the cache holds the objects themselves, so an id in it cannot have been reused by another object
        if known is not None and known[0] is key and known[1] is entry and known[2] is endpoint:
            return known[3]
        principal = Principal(key.id, key.name, key.is_primary, entry, endpoint)
        if len(_PRINCIPALS) >= _PRINCIPALS_MAX:
            _PRINCIPALS.clear()
        _PRINCIPALS[ident] = (key, entry, endpoint, principal)
        return principal


_PRINCIPALS: dict[
    tuple[int, int, int], tuple[ApiKey, PlatformEntry | None, Endpoint | None, Principal]
] = {}  # frozen, so one instance serves every request of the same caller (a frozen dataclass is slow to make)
_PRINCIPALS_MAX = 1024


class Checks:
    def __init__(
        self,
        *,
        endpoints: Sequence[Endpoint],
        store: Store,
        authenticator: KeyAuthenticator,
        max_body_size: int = 1024 * 1024,
        id_cache_ttl: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.matcher = matcher.compile(endpoints)
        self.limits = limits
        self.store = store
        self.authenticator = authenticator
        self.max_body_size = max_body_size
        self.known_ids = KnownIds(store, ttl=id_cache_ttl)
        self.usage = UsageRecorder(store)
        self.watcher = ChangeWatcher(store, self.changed)

    def target(self, scope: Scope) -> HeaderMap | None:
        """Step 1, for every caller: the head must be within the limits, the raw target and framing headers
        already canonical.

        Returns `canonical.header_map()` of the request's headers, for `admit()`."""
        return canonical.check(
            scope["method"], scope["raw_path"], scope["query_string"], scope["headers"], self.limits
        )

    async def admit(
        self, scope: Scope, receive: Receive, admission: Admission, headers: HeaderMap | None = None
    ) -> None:
        """Steps 2-5; raises Refusal, or ClientGone if the client left while sending its body.

        `headers` is what `target()` returned for this request; without it admit() makes it again. The common
        case awaits nothing but the body: cached key, ids known to exist, no store round trip due."""
        if headers is None:
            headers = canonical.header_map(scope["headers"])
        found = self._match(scope, admission)
        # 2. authentication, after hearing of changes other workers or instances made
        if self.watcher.due():
            await self.watcher.tick()
        authenticator = self.authenticator
        try:
            key = authenticator.cached(scope, headers) or await authenticator.authenticate(scope, headers)
        except StoreUnavailable:
            raise Refusal(503, reason="store_unavailable", step="auth", detail="the key store is unavailable")
        self._allow(found, key, admission)
        content_type, content_encoding, content_length = _body_headers(scope, headers)
        body = None
        if scoping.needs_body(admission.endpoint, key, content_type, content_encoding):
            body = await read_body(receive, content_length, self.max_body_size)
        application_ids, entity_ids = self._inspect(scope, key, content_type, content_encoding, body, admission)
        # 5. every id must name an existing application or entity
        if (application_ids or entity_ids) and not self.known_ids.known(application_ids, entity_ids):
            await self.known_ids.check(application_ids, entity_ids)

    def decide(self, scope: Scope, body: bytes, admission: Admission, headers: HeaderMap | None) -> bool:
        """Steps 2-5 for a request whose whole body is already here, when they need no waiting.

        True: admitted (the body is in `admission.body` whether or not it was inspected); a refusal raises.
        False: something must be waited for (changes to hear of, a key or ids to look up in the store): run
        admit() on a fresh Admission. The same steps as admit(), in the same order, each where it would await
        returning False instead."""
        if headers is None:
            headers = canonical.header_map(scope["headers"])
        found = self._match(scope, admission)
        if self.watcher.due():
            return False
        key = self.authenticator.cached(scope, headers)
        if key is None:
            return False
        self._allow(found, key, admission)
        content_type, content_encoding, content_length = _body_headers(scope, headers)
        inspected = None
        if scoping.needs_body(admission.endpoint, key, content_type, content_encoding):
            limit = self.max_body_size
            if (content_length is not None and content_length > limit) or len(body) > limit:
                raise _too_large(limit)
            inspected = body
        application_ids, entity_ids = self._inspect(scope, key, content_type, content_encoding, inspected, admission)
        if inspected is None:
            admission.body = body  # read by the server already: forwarded as it came
        return not (application_ids or entity_ids) or self.known_ids.known(application_ids, entity_ids)

    def _match(self, scope: Scope, admission: Admission) -> matcher.Result:
        found = self.matcher.match(scope["method"], scope["raw_path"])
        if found:
            admission.endpoint = found.endpoint
        return found

    def _allow(self, found: matcher.Result, key: ApiKey, admission: Admission) -> None:
        """3./4. primary keys may call any path; linked keys only the allowlist."""
        admission.key = key
        self.usage.touch(key.id)
        if not found and key.platform:  # key.platform: not key.is_primary, without the property call
            if found is matcher.NOT_FOUND:
                raise Refusal(403, reason="not_allowlisted", step="allowlist", detail="path is not allowlisted")
            raise Refusal(403, reason="method_not_allowed", step="allowlist", detail="method is not allowlisted")

    def _inspect(
        self,
        scope: Scope,
        key: ApiKey,
        content_type: bytes | None,
        content_encoding: bytes | None,
        body: bytes | None,
        admission: Admission,
    ) -> tuple[Iterable[str], Iterable[str]]:
        """4. the ids the request names, checked (FILL/FORCE applied); the ids, for step 5."""
        decision = scoping.inspect(
            admission.endpoint,
            key,
            query=scope["query_string"],
            content_type=content_type,
            content_encoding=content_encoding,
            body=b"" if body is None else body,
            limits=self.limits,
        )
        admission.entry = decision.entry
        admission.query = decision.query
        admission.body = decision.body if body is not None else None
        admission.changed = decision.changed
        return decision.application_ids, decision.entity_ids

    def changed(self) -> None:
        """Keys or ids may have changed (here, in another worker or another instance): drop what is cached."""
        self.authenticator.invalidate()
        self.known_ids.clear()

    async def start(self) -> None:
        """Once the store is open: start hearing of changes (raises StoreError if that is impossible)."""
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.usage.close()


def _body_headers(scope: Scope, headers: HeaderMap | None) -> tuple[bytes | None, bytes | None, int | None]:
    """Content-Type, Content-Encoding and the declared length (step 1 already refused duplicates)."""
    if headers is not None:
        length = headers.get(b"content-length")
        return (
            headers.get(b"content-type"),
            headers.get(b"content-encoding"),
            int(length) if length is not None and length.isdigit() else None,
        )
    content_type = content_encoding = None
    content_length: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding":
            content_encoding = value
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else None
    return content_type, content_encoding, content_length


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit`.

    A declared Content-Length over the limit is refused before reading anything; the bytes that arrive are
    counted regardless of what was declared.
    """
    if declared is not None and declared > limit:
        raise _too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    chunk = message.get("body") or b""
    if len(chunk) > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return chunk  # the whole body in one message, as servers send a small one
    chunks = [chunk] if chunk else []
    size = len(chunk)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(413, reason="body_too_large", step="body", detail=f"the body is larger than {limit} bytes")


class KnownIds:
    """Step 5 without a store round trip per request: ids seen to exist are remembered for `ttl` seconds.

    Only existence is cached, never absence: ids only disappear through deletes, which clear this cache in
    the process that made them (other processes within `ttl`). Plain dicts of deadlines: the hit, checked on
    every request that names an id, is one dict lookup and a comparison.
    """

    def __init__(self, store: Store, *, ttl: float = 5.0, maxsize: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.maxsize = maxsize
        self._applications: dict[str, float] = {}
        self._entities: dict[str, float] = {}

    def known(self, application_ids: Iterable[str], entity_ids: Iterable[str]) -> bool:
        """Whether every id is known to exist: check() would return at once (without a coroutine)."""
        now = _monotonic()
        known_apps = self._applications
        for ident in application_ids:
            if known_apps.get(ident, 0.0) <= now:
                return False
        known_entities = self._entities
        for ident in entity_ids:
            if known_entities.get(ident, 0.0) <= now:
                return False
        return True

    async def check(self, application_ids: Iterable[str], entity_ids: Iterable[str]) -> None:
        now = time.monotonic()
        known_apps, known_entities = self._applications, self._entities
        applications = [i for i in application_ids if known_apps.get(i, 0.0) <= now]
        entities = [i for i in entity_ids if known_entities.get(i, 0.0) <= now]
        if not applications and not entities:
            return
        try:
            missing_apps, missing_entities = await self.store.missing_ids(applications, entities)
        except StoreUnavailable:
            raise Refusal(503, reason="store_unavailable", step="existence", detail="the store is unavailable")
        deadline = time.monotonic() + self.ttl
        for ident in applications:
            if ident not in missing_apps:
                self._remember(known_apps, ident, deadline)
        for ident in entities:
            if ident not in missing_entities:
                self._remember(known_entities, ident, deadline)
        if missing_apps:
            ident = sorted(missing_apps)[0]
            raise Refusal(400, "unknown_application", "existence", "applicationId", f"no application {ident!r}")
        if missing_entities:
            ident = sorted(missing_entities)[0]
            raise Refusal(400, "unknown_entity", "existence", "entityId", f"no entity {ident!r}")

    def _remember(self, known: dict[str, float], ident: str, deadline: float) -> None:
        known.pop(ident, None)  # re-inserted at the end: the oldest entries come first
        while len(known) >= self.maxsize:
            del known[next(iter(known))]
        known[ident] = deadline

    def clear(self) -> None:
        self._applications.clear()
        self._entities.clear()


class UsageRecorder:
    """"Last used" per key, kept in memory and written to the store at most once a minute, off the request path.

    A request that finds the last write more than `interval` ago starts a short background write of every
    pending stamp; `close()` writes what is left. No long-lived task, so it works in any event loop.
    """

    def __init__(self, store: Store, interval: float = USAGE_FLUSH_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._next = 0.0
        self._writing: asyncio.Task[None] | None = None

    def touch(self, key_id: str) -> None:
        now = _time()
        self._pending[key_id] = now
        if now >= self._next and self._writing is None:
            self._next = now + self.interval
            self._writing = asyncio.get_running_loop().create_task(self.flush())
            self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        last_used = {key_id: datetime.fromtimestamp(when, UTC) for key_id, when in pending.items()}
        try:
            await self.store.record_key_use(last_used)
        except Exception as exc:  # a lost "last used" stamp must never take the gateway down
            logger.warning("could not record key use: %s", exc.__class__.__name__)

    async def close(self) -> None:
        if self._writing is not None:
            await asyncio.wait([self._writing])
        await self.flush()


_CLIENTS: dict[str, str | None] = {}


def client_text(authenticator: KeyAuthenticator, scope: Scope) -> str | None:
    """The client's address for the log: `KeyAuthenticator.client_address()`, the very code that checks a key's
    allowedIPs. Without trusted proxies it depends on the peer alone, and is remembered per peer."""
    client = scope.get("client")
    if not authenticator._trusted:  # no X-Forwarded-For is believed (auth.py's own test, read here)
        if client is None:
            return None
        peer = client[0]
        known = _CLIENTS.get(peer, _CLIENTS)
        if known is not _CLIENTS:
            return known  # type: ignore[return-value]
        address = authenticator.client_address(scope)
        if len(_CLIENTS) >= 4096:
            _CLIENTS.clear()
        text = _CLIENTS[peer] = None if address is None else str(address)
        return text
    address = authenticator.client_address(scope)
    return None if address is None else str(address)


def refusal_headers(status: int, length: int) -> list[tuple[bytes, bytes]]:
    headers = [JSON_HEADERS[0], (b"content-length", str(length).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"App"))
    elif status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    return headers


_ANSWERS: dict[tuple[int, str, str, str | None, str, Family], tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
_ANSWERS_MAX = 1024


def _answer(refusal: Refusal, family: Family) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """A refusal's headers and body, encoded once per distinct refusal (an attacker repeats his)."""
    # The fields as a tuple: hashing and comparing it is C code, the dataclass's __hash__/__eq__ are not.
    key = (refusal.status, refusal.reason, refusal.step, refusal.field, refusal.detail, family)
    answer = _ANSWERS.get(key)
    if answer is None:
        payload = refusal_body(refusal, family)
        answer = (tuple(refusal_headers(refusal.status, len(payload))), payload)
        if len(_ANSWERS) >= _ANSWERS_MAX:
            _ANSWERS.clear()
        _ANSWERS[key] = answer
    return answer


_HTTP_ANSWERS: dict[tuple[int, str, str, str | None, str, Family], tuple[bytes, bytes, bool]] = {}


def _http_answer(refusal: Refusal, family: Family) -> tuple[bytes, bytes, bool]:
    """The refusal as HTTP/1.1 in two parts, the status line and headers (each line ending in CRLF), and the
    blank line and body; and whether the connection closes after it. Encoded once per distinct refusal."""
    key = (refusal.status, refusal.reason, refusal.step, refusal.field, refusal.detail, family)
    answer = _HTTP_ANSWERS.get(key)
    if answer is None:
        headers, payload = _answer(refusal, family)
        phrase = HTTPStatus(refusal.status).phrase.encode("ascii")
        lines = [b"HTTP/1.1 %d %s\r\n" % (refusal.status, phrase)]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        answer = (b"".join(lines), b"\r\n" + payload, (b"connection", b"close") in headers)
        if len(_HTTP_ANSWERS) >= _ANSWERS_MAX:
            _HTTP_ANSWERS.clear()
        _HTTP_ANSWERS[key] = answer
    return answer


def refusal_answer(refusal: Refusal, family: Family, request_id: str | None = None) -> tuple[bytes, bool]:
    """The refusal as a complete HTTP/1.1 answer, as uvicorn would write it from `refuse()`'s two messages (with
    the same `request_id`), and whether the connection must close after it (413: the rest of the body is never
    read). The X-Request-Id line is the last header, where `refuse()` puts it."""
    head, rest, close = _http_answer(refusal, family)
    if request_id is None:
        return head + rest, close
    return b"".join((head, b"x-request-id: ", request_id.encode("ascii"), b"\r\n", rest)), close


async def refuse(send: Send, refusal: Refusal, family: Family, request_id: str | None = None) -> int:
    """Answer with the refusal's body in the endpoint's error family; nothing has been forwarded. Returns the
    body's length."""
    headers, payload = _answer(refusal, family)
    # a fresh list each time: a server or middleware may add to the headers it is given
    sent = list(headers)
    if request_id is not None:
        sent.append((b"x-request-id", request_id.encode("ascii")))
    await send({"type": "http.response.start", "status": refusal.status, "headers": sent})
    await send({"type": "http.response.body", "body": payload})
    return len(payload)
