"""Steps 1-5 of the request path, written once for every caller.

`Checks.target()` is step 1 (canonical target). Steps 2-5 are one procedure, `Checks.steps()`, that never
awaits (sans-IO, as h11 is): it runs top to bottom, authenticate, match the allowlist, count the request
against its rate limits, read the ids (from the body when they live there), check and FILL/FORCE them, check
they exist, and where it needs something only I/O can give, it yields what it needs and is sent the answer:

    (CHANGES,)          hear of changes other processes made before trusting the caches (watcher.tick())
    (KEY, secret_hash)  the key record from the store, sent back (authenticator.load())
    (LIMITS, plan)      count the request in the shared counters, the verdict sent back (limiter.ask(), Redis;
                        local counters are counted in line)
    (BODY,)             the whole request body, sent back
    (IDS, apps, ents)   ask the store whether these ids exist (known_ids.look_up(), which refuses if not)

Its callers drive it: `admit()` with awaits (the ASGI gateway, the middleware, `explain`), `decide()` without
(the early-answer path under `keyscope serve`, which has the whole body and steps aside for anything else).
An exception from I/O is thrown into the procedure at the step that asked, so that the step's rules (a store
that is down means 503) live in the step. It fills an `Admission` as it goes; `explain` also passes a
`Recorder` that hears each step's outcome.

Shadow mode (`shadow=True` for the gateway, or a key with `enforce` false): a refusal by the allowlist, a rate
limit, the scope or the existence check is not raised but noted (`Admission.shadowed()`), and the procedure
ends there with the request admitted as the client sent it, as if no later step ran. What steps 1-2 refuse, a
body over the limit and every 503 (a store that is down is no verdict on the request) are refused all the
same. A shadowed rate limit counts nothing, as the refusal it stands for would not have; so a shadow key's
counters move exactly as an enforcing twin's would.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Protocol

from keyscope import scope as scoping
from keyscope.allowlist import matcher
from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.models import ApiKey
from keyscope.core.settings import Settings
from keyscope.core.ttlcache import Clock
from keyscope.core.types import Receive, Scope, Send
from keyscope.decide.admission import Admission
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.body import ClientGone, body_headers, read_body, too_large
from keyscope.decide.known_ids import KnownIds
from keyscope.decide.management import is_management
from keyscope.decide.ratelimit import LOCAL, Limiter, Unavailable, too_many
from keyscope.decide.usage import UsageRecorder
from keyscope.http import canonical
from keyscope.http.canonical import HeaderMap
from keyscope.observe import accesslog
from keyscope.store.base import Store, StoreUnavailable
from keyscope.store.watch import ChangeWatcher

CHANGES = "changes"
KEY = "key"
BODY = "body"
IDS = "ids"
LIMITS = "limits"
SHADOWED = frozenset({"allowlist", "ratelimit", "scope", "existence"})
"""The steps whose refusals shadow mode forwards instead (never a 503: the store being down is no verdict)."""


def _shadowed(shadow: bool, refusal: Refusal) -> bool:
    return shadow and refusal.step in SHADOWED and refusal.status != 503


def _not_allowlisted(found: matcher.Result) -> Refusal:
    if found is matcher.NOT_FOUND:
        return Refusal(403, reason="not_allowlisted", step="allowlist", detail="path is not allowlisted")
    return Refusal(403, reason="method_not_allowed", step="allowlist", detail="method is not allowlisted")

Need = tuple[Any, ...]
Management = Callable[[Scope, Receive, Send, Admission, float, "HeaderMap | None"], Awaitable[None]]


class Recorder(Protocol):
    """Hears the outcome of each step that passed (`explain` builds its trace from it)."""

    def authenticated(self, key: ApiKey) -> None: ...
    def matched(self, found: matcher.Result) -> None: ...
    def inspected(self, decision: scoping.Decision, body: bytes | None) -> None: ...
    def existing(self) -> None: ...


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
        clock: Clock = time.monotonic,
        limiter: Limiter | None = None,
        shadow: bool = False,
    ) -> None:
        self.matcher = matcher.compile(endpoints)
        self.limiter = Limiter(clock=clock) if limiter is None else limiter
        self.shadow = shadow
        self.limits = limits
        self.store = store
        self.authenticator = authenticator
        self.max_body_size = max_body_size
        self.known_ids = KnownIds(store, ttl=id_cache_ttl, clock=clock)
        self.usage = UsageRecorder(store)
        self.watcher = ChangeWatcher(store, self.changed)

    @staticmethod
    def options(settings: Settings) -> dict[str, Any]:
        """`assemble()`'s keywords from validated settings, as every entry point built from settings passes them
        (the gateway, the authorizer)."""
        return {
            "key_cache_ttl": settings.key_cache_ttl,
            "trusted_proxies": settings.trusted_proxies,
            "max_body_size": settings.max_body_size,
            "limits": settings.limits(),
            "rate_limit_store": settings.rate_limit_store,
            "rate_limit_on_error": settings.rate_limit_on_error,
            "shadow": settings.shadow,
        }

    @classmethod
    def assemble(
        cls,
        *,
        endpoints: Sequence[Endpoint],
        store: Store,
        key_cache_ttl: float = 5.0,
        trusted_proxies: Sequence[str] = (),
        max_body_size: int = 1024 * 1024,
        limits: Limits = DEFAULT_LIMITS,
        rate_limit_store: str = LOCAL,
        rate_limit_on_error: str = "allow",
        shadow: bool = False,
    ) -> Checks:
        """The checks with their own key authenticator (`checks.authenticator`) and rate limiter, from the settings
        every entry point takes (the gateway, the middleware, the authorizer): one key-cache TTL for keys, unknown
        secrets and known ids alike."""
        authenticator = KeyAuthenticator(
            store, ttl=key_cache_ttl, negative_ttl=key_cache_ttl, trusted_proxies=trusted_proxies
        )
        return cls(
            endpoints=endpoints,
            store=store,
            authenticator=authenticator,
            max_body_size=max_body_size,
            id_cache_ttl=key_cache_ttl,
            limits=limits,
            limiter=Limiter(rate_limit_store, on_error=rate_limit_on_error),
            shadow=shadow,
        )

    def target(self, scope: Scope) -> HeaderMap | None:
        """Step 1, for every caller: the head must be within the limits, the raw target and framing headers
        already canonical. Returns `canonical.header_map()` of the request's headers, for the steps after."""
        return canonical.check(
            scope["method"], scope["raw_path"], scope["query_string"], scope["headers"], self.limits
        )

    def steps(
        self, scope: Scope, headers: HeaderMap | None, admission: Admission, recorder: Recorder | None = None
    ) -> Generator[Need, Any, None]:
        """Steps 2-5 of one request; raises Refusal. See the module's docstring for what it yields."""
        found = self.matcher.match(scope["method"], scope["raw_path"])
        if found:
            admission.endpoint = found.endpoint
        if self.watcher.due():
            yield (CHANGES,)
        # 2. authentication
        authenticator = self.authenticator
        secret_hash = authenticator.secret_hash(scope, headers)
        record = authenticator.cached(secret_hash)
        if record is None:
            try:
                record = yield (KEY, secret_hash)
            except StoreUnavailable:
                raise Refusal(503, reason="store_unavailable", step="auth", detail="the key store is unavailable")
        key = authenticator.admit(record, scope)
        admission.key = key
        self.usage.touch(key.id)
        if recorder is not None:
            recorder.authenticated(key)
        # 3. primary keys may call any path; linked keys only the allowlist
        if recorder is not None:
            recorder.matched(found)
        shadow = self.shadows(key)
        # (a refusal is raised as it is made: one held in a local would make a cycle with its traceback)
        if not found and key.platform:
            if not shadow:
                raise _not_allowlisted(found)
            admission.shadowed(_not_allowlisted(found), scope["query_string"], None)
            return
        # the key's rate limits and its applications', before the body is read
        limiter = self.limiter
        plan = limiter.plan(key)
        if plan is not None:
            try:
                verdict = limiter.count(plan)
                if verdict is None:
                    verdict = yield (LIMITS, plan)
                elif verdict.admitted:
                    admission.counted = plan
            except Unavailable:
                verdict = limiter.failed()  # None: let it through; or the 503 (never shadowed) is raised
            if verdict is not None:
                admission.rate = verdict
                if not verdict.admitted:
                    if not shadow:
                        raise too_many(verdict)
                    admission.shadowed(too_many(verdict), scope["query_string"], None)
                    return
        # 4. the ids the request names, checked (FILL/FORCE applied), from the body when they live there
        content_type, content_encoding, declared = body_headers(scope, headers)
        body = None
        if scoping.needs_body(admission.endpoint, key, content_type, content_encoding):
            limit = self.max_body_size
            if declared is not None and declared > limit:
                raise too_large(limit)
            body = yield (BODY,)
            if len(body) > limit:
                raise too_large(limit)
        try:
            decision = scoping.inspect(
                admission.endpoint,
                key,
                query=scope["query_string"],
                content_type=content_type,
                content_encoding=content_encoding,
                body=b"" if body is None else body,
                limits=self.limits,
            )
        except Refusal as refusal:
            if not _shadowed(shadow, refusal):
                raise
            admission.shadowed(refusal, scope["query_string"], body)
            return
        admission.entry = decision.entry
        admission.query = decision.query
        admission.body = decision.body if body is not None else None
        admission.changed = decision.changed
        if recorder is not None:
            recorder.inspected(decision, body)
        # 5. every id must name an existing application or entity
        if decision.application_ids or decision.entity_ids:
            unknown = self.known_ids.unknown(decision.application_ids, decision.entity_ids)
            if unknown is not None:
                try:
                    yield (IDS, *unknown)
                except Refusal as refusal:
                    if not _shadowed(shadow, refusal):
                        raise
                    admission.shadowed(refusal, scope["query_string"], body)
                    return
        if recorder is not None:
            recorder.existing()

    async def admit(
        self,
        scope: Scope,
        receive: Receive,
        admission: Admission,
        headers: HeaderMap | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        """Steps 2-5 driven with awaits; raises Refusal, or ClientGone if the client left while sending its body.

        `headers` is what `target()` returned for this request; without it admit() makes it again."""
        if headers is None:
            headers = canonical.header_map(scope["headers"])
        procedure = self.steps(scope, headers, admission, recorder)
        advance: Callable[[Any], Need] = procedure.send
        value: Any = None
        while True:
            try:
                need = advance(value)
            except StopIteration:
                return
            try:
                if need[0] is BODY:  # the need of every request with a body: read in line
                    value = await read_body(receive, self.max_body_size)
                else:
                    value = await self._provide(need)
                advance = procedure.send
            except Exception as exc:
                value, advance = exc, procedure.throw

    async def _provide(self, need: Need) -> Any:
        kind = need[0]
        if kind is KEY:
            return await self.authenticator.load(need[1])
        if kind is IDS:
            return await self.known_ids.look_up(need[1], need[2])
        if kind is LIMITS:
            return await self.limiter.ask(need[1])
        return await self.watcher.tick()

    def decide(self, scope: Scope, body: bytes, admission: Admission, headers: HeaderMap | None) -> bool:
        """Steps 2-5 driven without awaiting, for a request whose whole body is already here.

        True: admitted (the body is in `admission.body` whether or not it was inspected); a refusal raises.
        False: the procedure needs I/O; run admit() on a fresh Admission instead. What it counted against
        local rate limits is taken back then, since admit() counts the request again."""
        if headers is None:
            headers = canonical.header_map(scope["headers"])
        procedure = self.steps(scope, headers, admission)
        try:
            need = procedure.send(None)
            if need[0] is BODY:
                need = procedure.send(body)
        except StopIteration:
            if admission.body is None:
                admission.body = body  # read by the server already: forwarded as it came
            return True
        procedure.close()
        if admission.counted is not None:
            self.limiter.undo(admission.counted)
        return False

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        admission: Admission,
        started: float,
        management: Management | None = None,
    ) -> bool:
        """Steps 1-5 for an ASGI entry point. True: admitted, forward it. False: answered here, either refused
        (answered and logged), or the client left (logged), or a management call handed to `management`."""
        try:
            headers = self.target(scope)
            admission.begin(scope, headers, self.authenticator)
            if management is not None and is_management(scope["raw_path"]):
                await management(scope, receive, send, admission, started, headers)
                return False
            await self.admit(scope, receive, admission, headers)
        except Refusal as refusal:
            await admission.refused(scope, send, refusal, started, self.authenticator)
            return False
        except ClientGone:
            admission.log(started, scope, accesslog.FAILED, accesslog.CLIENT_GONE)
            return False
        return True

    def shadows(self, key: ApiKey) -> bool:
        """Whether this key's refusals at steps 3-5 and its rate limits are only noted (shadow mode)."""
        return self.shadow or not key.enforce

    def changed(self) -> None:
        """Keys or ids may have changed (here, in another worker or another instance): drop what is cached."""
        self.authenticator.invalidate()
        self.known_ids.clear()
        self.limiter.changed()

    async def start(self) -> None:
        """Once the store is open: start hearing of changes (raises StoreError if that is impossible)."""
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.usage.close()
        await self.limiter.close()
